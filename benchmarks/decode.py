"""Greedy KV-cache decoding of the cached LM teacher: float vs served W8A16 / W4A16 (tokens/s).

The served models are ``cj.export`` of the teacher with round-to-nearest weights (per channel
at 8 bits, per group of 32 at 4 bits; head at 8 bits per channel); decoding
(``experiments.lm_decode``) runs every linear layer of a served model through the kernel
dispatcher (``compressjax.kernels.matmul``) from the packed weights. Each case is checked
against the full forward of its model (float ``LM.apply`` / the served model's ``apply``) on
the generated sequence: max |logit| difference and whether the greedy tokens are its argmaxes.
Timing: the jitted ``generate`` (prefill + ``new_tokens`` greedy steps in one ``lax.scan``),
run once first (the check compiled it), median of ``--repeats`` runs; tokens/s counts the
generated tokens of all sequences.

  python benchmarks/decode.py [--quick] [--batch 1 8] [--prompt 32] [--new 96]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compressjax as cj  # pylint: disable=g-import-not-at-top
from benchmarks import _results
from compressjax import kernels
from compressjax.core import Rule
from compressjax.core.matching import UnusedRuleWarning
from compressjax.quant.granularity import PER_CHANNEL, per_group
from compressjax.quant.uniform import Uniform
from experiments.lm_common import load_corpus, require_teacher
from experiments.lm_decode import check_against_forward, generate



def served(model, params, bits: int, group: int | None, example):
  gran = PER_CHANNEL if group is None else per_group(group)
  rules = [Rule(pattern="^head/", weight=Uniform(bits=8, granularity=PER_CHANNEL)),
           Rule(pattern=".", weight=Uniform(bits=bits, granularity=gran))]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    m = cj.compress(model, rules)
    v = cj.init_from(m, {"params": params}, example, train=False)
  return cj.export(m, v, example, train=False)


def time_case(model, variables, prompt, new_tokens, repeats) -> dict:
  run = lambda: jax.block_until_ready(generate(model, variables, prompt, new_tokens=new_tokens))
  start = time.perf_counter()
  run()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return {"first_run_s": round(compile_s, 3), "median_s": median,
          "tokens_per_s": prompt.shape[0] * new_tokens / median}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="quick teacher, short, batch 1")
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None, help="JSON path (default results/decode_<dev>.json)")
  args = parser.parse_args(argv)
  if args.quick:
    args.batch, args.prompt, args.new, args.repeats = [1], 8, 16, 1
  model, params, _ = require_teacher("teacher_quick" if args.quick else "teacher")
  test = load_corpus()[0]["test"]
  example = jnp.asarray(test[:1, :-1], jnp.int32)
  cases = {"float": (model, {"params": params})}
  for name, bits, group in (("W8A16 channel", 8, None), ("W4A16 g32", 4, 32)):
    cases[name] = served(model, params, bits, group, example)
  dev = jax.devices()[0]
  rows = []
  for batch in args.batch:
    prompt = jnp.asarray(test[:batch, :args.prompt], jnp.int32)
    for name, (full_model, full_vars) in cases.items():
      check = check_against_forward(model, full_vars, full_model, full_vars, prompt, args.new)
      timing = time_case(model, full_vars, prompt, args.new, args.repeats)
      fc1 = full_vars.get("served", {}).get("block0", {}).get("mlp", {}).get("fc1", {})
      reason = None
      if "kernel" in fc1:
        _, reason = kernels.matmul(jnp.zeros((batch, model.width)), fc1["kernel"]["weight"],
                                   explain=True)
      rows.append({"case": name, "batch": batch, "prompt": args.prompt, "new_tokens": args.new,
                   **timing, **check, "dispatch_fc1": reason})
      print(rows[-1], flush=True)
  result = {"device": str(dev), "device_kind": dev.device_kind, "backend": jax.default_backend(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
            "load_average_1min_at_end": os.getloadavg()[0], "quick": args.quick, "rows": rows}
  _results.save(result, "decode", quick=args.quick, out=args.out)
  return result


if __name__ == "__main__":
  main()
