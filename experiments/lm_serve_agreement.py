"""Why served and fake-quant LM logits differ: site by site, after QAT fine-tuning.

Fine-tunes the cached LM teacher like ``experiments.lm_qat`` (same rules, steps and data), then
runs :func:`compressjax.export.site_agreement` on the check batch: per weight site, how many
activation codes differ between the served (int8 dot) run and fake-quant arithmetic, and the
site's served-vs-fake output error given the same input. Prints one line per site and adds
the run to ``results/lm_serve_agreement.json`` (keyed by method and bits).

  python -m experiments.lm_serve_agreement [--method lsq] [--bits 4 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os

import jax.numpy as jnp

from compressjax.export import site_agreement
from experiments import lm_qat
from experiments.lm_common import load_corpus, require_teacher


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default="lsq", choices=lm_qat.METHODS)
  parser.add_argument("--bits", type=int, nargs=2, default=(4, 4), metavar=("W", "A"))
  parser.add_argument("--quick", action="store_true", help="quick teacher, 10 steps")
  args = parser.parse_args(argv)
  cfg = lm_qat.QUICK if args.quick else lm_qat.FULL
  model, params, _ = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  test = corpus["test"][:cfg.eval_windows]
  example = jnp.asarray(test[:1, :-1], jnp.int32)
  check = jnp.asarray(test[:8, :-1], jnp.int32)
  result = {}

  def evaluate(m, v, example, test, check):  # lm_qat's serve_and_eval, plus the site table
    sm, sv = lm_qat.cj.export(m, v, example, train=False)
    fake, served = m.apply(v, check), sm.apply(sv, check)
    result["max_abs_logit_diff"] = float(jnp.max(jnp.abs(served - fake)))
    result["sites"] = site_agreement(sm, sv, check, train=False)
    return {}

  lm_qat.serve_and_eval = evaluate
  w_bits, a_bits = args.bits
  lm_qat.finetune(cfg, model, params, corpus, args.method, w_bits, a_bits, 0, example, test,
                  check)
  print(f"{args.method} W{w_bits}A{a_bits}: max |served - fake| logit "
        f"{result['max_abs_logit_diff']:.3g} on {check.shape[0]} windows")
  for name, e in result["sites"].items():
    codes = (f"codes differing {e['codes_differing']}/{e['codes']} (max {e['code_diff_max']})"
             if "codes" in e else "float input")
    print(f"  {name:26s} same-input rel err {e['same_input_rel_err']:.1e}  {codes}")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      f"lm_serve_agreement{'_quick' if args.quick else ''}.json")
  runs = json.load(open(path)) if os.path.exists(path) else {}
  runs[f"{args.method} W{w_bits}A{a_bits}"] = result
  with open(path, "w") as f:
    json.dump(runs, f, indent=1)
  print(f"saved {path}")
  return result


if __name__ == "__main__":
  main()
