"""Quantization-aware fine-tuning of the cached LM teacher: LSQ, DoReFa+PACT and SAT.

Every weight site of the LM's blocks gets the method's weight quantizer at ``w_bits`` and its
activation quantizer at ``a_bits`` on the site's input (signed or unsigned decided at init from
the float activations: RMSNorm outputs and attention outputs are signed); the output ``head``
gets the method at 8 bits (weights and input), the embeddings stay float, attention's
activation x activation products stay float. Recipes: ``compressjax.quant.recipes``
(``lsq``, ``dorefa_pact``, ``sat``), weights per tensor as there.

The compressed model starts from the teacher (``cj.init_from`` on a train batch: LSQ steps and
PACT clip levels from the float weights and activations), then ``steps`` AdamW steps on the train
split (warmup-cosine, no weight decay on quantizer parameters). Reported: test bits per byte of
the SERVED model (``cj.export``) on the first ``eval_windows`` test windows, |served - fake|
logits on one batch, and the train bpb at the first and last steps.

  python -m experiments.lm_qat            # results/lm_qat.{json,md,png}
  python -m experiments.lm_qat --quick    # quick teacher, one config, few steps: lm_qat_quick.*
  python -m experiments.lm_qat --seeds 0 1 2 --resume   # adds seeds, keeps the rows already run
  python -m experiments.lm_qat --methods sat   # reruns SAT, keeps the other methods' saved rows

Each row records its method's weight quantizer (``weight_quantizer``), so a table merged from
runs of different code says which rows used which quantizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.compress import SITE_PARAMS
from compressjax.core.matching import UnusedRuleWarning
from compressjax.quant.recipes import recipe
from experiments import _report
from experiments.lm_common import (batches, load_corpus, require_teacher, saved_rows,
                                   variables_bpb, variables_nats)
from experiments.lm_ptq import serve_and_eval

METHODS = ("lsq", "dorefa_pact", "sat")


@dataclasses.dataclass(frozen=True)
class Config:
  teacher: str = "teacher"
  methods: tuple[str, ...] = METHODS
  bits: tuple[tuple[int, int], ...] = ((4, 8), (3, 8), (2, 8), (4, 4))
  seeds: tuple[int, ...] = (0, 1, 2)
  steps: int = 100
  batch_size: int = 16
  lr: float = 5e-4
  warmup: int = 15
  eval_windows: int = 512


FULL = Config()
QUICK = Config(teacher="teacher_quick", methods=("lsq",), bits=((4, 8),), seeds=(0,), steps=3,
               batch_size=4, warmup=1, eval_windows=16)


def rules_for(method: str, w_bits: int, a_bits: int) -> list[Rule]:
  weight, act = recipe(method, w_bits, a_bits)
  head_weight, head_act = recipe(method, 8, 8)
  return [Rule(pattern="^head/", weight=head_weight, act=head_act.replace(signed=None)),
          Rule(pattern=".", weight=weight, act=act.replace(signed=None))]


def tx_for(cfg: Config, params) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, cfg.steps)
  decay = lambda p: {k: (jax.tree.map(lambda _: False, v) if k == SITE_PARAMS
                         else jax.tree.map(lambda a: a.ndim >= 2, v)) for k, v in p.items()}
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b2=0.99, weight_decay=0.1, mask=decay))


def finetune(cfg: Config, model, params, corpus, method, w_bits, a_bits, seed, example, test,
             check) -> dict:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    m = cj.compress(model, rules_for(method, w_bits, a_bits))
    init_batch = jnp.asarray(corpus["train"][:32, :-1], jnp.int32)
    v = cj.init_from(m, {"params": params}, init_batch, train=False)
  rest = {k: val for k, val in v.items() if k != "params"}
  tx = tx_for(cfg, v["params"])
  opt_state = tx.init(v["params"])

  @jax.jit
  def step(p, opt_state, tokens):
    loss, grads = jax.value_and_grad(
        lambda p: variables_nats(m, {**rest, "params": p}, tokens).mean())(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  p, losses, start, cpu = v["params"], [], time.time(), time.process_time()
  for _, tokens in zip(range(cfg.steps), batches(corpus["train"], cfg.batch_size, 100 + seed)):
    p, opt_state, loss = step(p, opt_state, tokens)
    losses.append(float(loss))
  train_seconds, train_cpu = time.time() - start, time.process_time() - cpu
  k = max(1, min(10, len(losses) // 5))
  row = {"method": method, "w_bits": w_bits, "a_bits": a_bits, "seed": seed,
         "train_bpb_first": float(np.mean(losses[:k])) / math.log(2),
         "train_bpb_last": float(np.mean(losses[-k:])) / math.log(2),
         "finite": bool(np.all(np.isfinite(losses))),
         "weight_quantizer": repr(recipe(method, w_bits, a_bits)[0]),
         "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(train_cpu, 1)}
  if not row["finite"]:
    return {**row, "test_bpb": float("nan")}
  return {**row, **serve_and_eval(m, {**rest, "params": p}, example, test, check)}


def resumable_rows(cfg: Config, path: str) -> dict[tuple, dict]:
  """Rows of an earlier (possibly partial) run at ``path`` that differs from ``cfg`` only in the
  methods, bit-widths and seeds swept, keyed by (method, w_bits, a_bits, seed)."""
  return saved_rows(path, cfg, ("methods", "bits", "seeds"),
                    lambda r: (r["method"], r["w_bits"], r["a_bits"], r["seed"]))


def swept(cfg: Config, key: tuple) -> bool:
  """Whether the (method, w_bits, a_bits, seed) ``key`` is one of ``cfg``'s runs."""
  method, w_bits, a_bits, seed = key
  return method in cfg.methods and (w_bits, a_bits) in cfg.bits and seed in cfg.seeds


def split_saved(cfg: Config, saved: dict[tuple, dict], resume: bool) -> tuple[list[dict], dict]:
  """Saved rows as (kept, done): rows outside ``cfg``'s sweep are kept as they are (merged into
  the table); rows inside it are reused only when ``resume`` (else rerun)."""
  kept = [r for k, r in saved.items() if not swept(cfg, k)]
  done = {k: r for k, r in saved.items() if swept(cfg, k)} if resume else {}
  return kept, done


def merged_config(cfg: Config, rows: list[dict]) -> dict:
  """``cfg`` as a dict with the methods and bit pairs of ``rows`` (kept rows included)."""
  return {**dataclasses.asdict(cfg),
          "methods": list(dict.fromkeys(r["method"] for r in rows)),
          "bits": [list(b) for b in dict.fromkeys((r["w_bits"], r["a_bits"]) for r in rows)]}


def run(cfg: Config, on_row=None, done: dict[tuple, dict] | None = None,
        kept: list[dict] = ()) -> dict:
  """Every (bits, method, seed) of ``cfg``; rows found in ``done`` are reused, not rerun (and
  passed to ``on_row`` with the new ones, so a partial file keeps them); ``kept`` rows (other
  methods' saved rows) come first in the result and every partial file."""
  model, params, info = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  test = corpus["test"][:cfg.eval_windows]
  float_bpb = variables_bpb(model, {"params": params}, test)
  example = jnp.asarray(test[:1, :-1], jnp.int32)
  check = jnp.asarray(test[:8, :-1], jnp.int32)
  rows, unused = list(kept), dict(done or {})
  for w_bits, a_bits in cfg.bits:
    for method in cfg.methods:
      for seed in cfg.seeds:
        key = (method, w_bits, a_bits, seed)
        rows.append(unused.pop(key, None) or finetune(
            cfg, model, params, corpus, method, w_bits, a_bits, seed, example, test, check))
        print(rows[-1], flush=True)
        if on_row is not None:
          on_row(rows + list(unused.values()), float_bpb)
  return {"config": merged_config(cfg, rows), "teacher": info.get("config"), "rows": rows,
          "float_bpb": float_bpb,
          "eval_windows": int(len(test)), "test_windows": int(len(corpus["test"])),
          "machine": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                      "cpus": os.cpu_count(), "jax": jax.__version__,
                      "load_average_1min_at_end": os.getloadavg()[0]}}


def bpb_of(rows: list[dict], method: str, w_bits: int, a_bits: int) -> list[float]:
  """The test bpb of every seed run of ``method`` at W``w_bits``A``a_bits``."""
  return [r["test_bpb"] for r in rows
          if (r["method"], r["w_bits"], r["a_bits"]) == (method, w_bits, a_bits)]


def bit_pairs(rows: list[dict]) -> list[tuple[int, int]]:
  """The (w_bits, a_bits) of ``rows``, activation bits then weight bits descending."""
  return sorted({(r["w_bits"], r["a_bits"]) for r in rows}, key=lambda b: (-b[1], -b[0]))


def markdown(result: dict, command: str) -> str:
  rows, cfg = result["rows"], result["config"]
  bits = bit_pairs(rows)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  n_seeds = len(cfg["seeds"])

  def cell(method, wb, ab):
    return _report.mean_sd_cell(bpb_of(rows, method, wb, ab), n_seeds)

  md = "# LM quantization-aware fine-tuning (served test bits per byte)\n\n"
  md += (f"{cfg['steps']} AdamW steps x {cfg['batch_size']} windows from the teacher, "
         f"lr {cfg['lr']}; {n_seeds} seed(s)"
         f"{' (mean ± sd)' if n_seeds > 1 else ' (no sd: one seed)'}; first "
         f"{result['eval_windows']} of {result['test_windows']} test windows. Head W8A8, "
         "embeddings float.\n\n")
  md += _report.markdown_table(["method"] + [f"W{w}A{a}" for w, a in bits],
                               [[m] + [cell(m, w, a) for w, a in bits] for m in methods])
  md += f"\nFloat teacher on the same windows: {result['float_bpb']:.4f} bpb.\n"
  md += method_gaps(rows)
  md += quantizers(rows)
  worst = max((r.get("served_minus_fake_max_abs_logit", 0.0) for r in rows), default=0.0)
  worst_bpb = max((abs(r.get("served_minus_fake_bpb_check", 0.0)) for r in rows), default=0.0)
  md += (f"\nServed vs fake on 8 windows: largest |logit difference| {worst:.2e}, largest "
         f"|bpb difference| {worst_bpb:.1e}. The served sites run the int8 dot path; its "
         "accumulation order differs from the fake-quant float matmul by float rounding, which "
         "occasionally moves a downstream activation across a rounding boundary (one code), so "
         "single logits can move while the bpb agrees.\n")
  cpu = sum(r["train_cpu_seconds"] for r in rows)
  m = result["machine"]
  md += (f"\n{m['device']} ({m['cpus']} cores, load {m['load_average_1min_at_end']:.1f}), jax "
         f"{m['jax']}; training CPU {cpu:.0f} s (all rows); the last command took "
         f"{result['total_seconds']:.0f} s: `{command}`\n")
  return md


def method_gaps(rows: list[dict]) -> str:
  """Per bit-width, each pair of methods run with >= 2 seeds: the difference of their mean
  bpb and that difference in units of the larger of the two seed sds."""
  lines = []
  for wb, ab in bit_pairs(rows):
    values = {m: v for m in dict.fromkeys(r["method"] for r in rows)
              if len(v := bpb_of(rows, m, wb, ab)) > 1}
    ranked = sorted(values, key=lambda m: np.mean(values[m]))
    for i, a in enumerate(ranked):
      for b in ranked[i + 1:]:
        d, z = _report.sd_gap(values[b], values[a])
        lines.append(f"- W{wb}A{ab}: {b} - {a} = {d:+.4f} bpb = {z:.1f} sd (n = "
                     f"{len(values[b])}, {len(values[a])}; {'> 3 sd' if z > 3 else 'within 3 sd'})")
  if not lines:
    return ""
  return ("\nMethod gaps (difference of means in units of the larger seed sd of the pair):\n\n"
          + "\n".join(lines) + "\n")


def quantizers(rows: list[dict]) -> str:
  """Which weight quantizer (bits left out) each method's rows recorded, with their settings."""
  settings: dict[tuple[str, str], list[str]] = {}
  for r in rows:
    q = re.sub(r"bits=\d+, ", "", r.get("weight_quantizer", "not recorded"))
    name = f"W{r['w_bits']}A{r['a_bits']}"
    keyed = settings.setdefault((r["method"], q), [])
    if name not in keyed:
      keyed.append(name)
  lines = [f"- {m}: `{q}`: {', '.join(s)}" for (m, q), s in settings.items()]
  return ("\nWeight quantizer of each method's rows (as recorded). Rows without a record were "
          "run before commit bc92271, when the `sat` recipe used SAT's paper zero point "
          "(`zero_point='grid'`); the `lsq` and `dorefa_pact` recipes are unchanged since.\n\n"
          + "\n".join(lines) + "\n")


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = result["rows"]
  bits = bit_pairs(rows)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, ax = plt.subplots(figsize=(6.5, 4))
  width = 0.8 / max(1, len(methods))
  for i, method in enumerate(methods):
    means, sds = [], []
    for wb, ab in bits:
      vals = bpb_of(rows, method, wb, ab)
      mean, sd = _report.mean_sd(vals) if vals else (float("nan"), 0.0)
      means.append(mean)
      sds.append(sd)
    ax.bar(np.arange(len(bits)) + i * width, means, width, yerr=sds, capsize=3, label=method)
  ax.set_xticks(np.arange(len(bits)) + width * (len(methods) - 1) / 2)
  ax.set_xticklabels([f"W{w}A{a}" for w, a in bits])
  ax.set_ylabel("served test bits per byte")
  ax.legend(fontsize=8)
  ax.set_title("LM QAT fine-tunes")
  _report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="seed values (default: the config's)")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--bits", nargs="+", default=None, metavar="W,A",
                      help="weight,activation bit pairs in run order (default: the config's)")
  parser.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                      help="methods to run (default: the config's); the saved rows (same setting) "
                           "outside the --methods/--bits/--seeds sweep are kept in the table")
  parser.add_argument("--resume", action="store_true",
                      help="reuse the rows of the existing (partial) JSON with the same setting")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  parser.add_argument("--from-json", action="store_true",
                      help="rewrite the Markdown/PNG from the existing (partial) JSON, no run")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  if args.seeds is not None:
    cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
  if args.bits is not None:
    cfg = dataclasses.replace(cfg, bits=tuple(tuple(map(int, b.split(","))) for b in args.bits))
  if args.steps is not None:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  if args.methods is not None:
    cfg = dataclasses.replace(cfg, methods=tuple(args.methods))
  start = time.time()
  name = "lm_qat_quick" if args.quick else "lm_qat"
  command = " ".join(["python -m experiments.lm_qat", *(sys.argv[1:] if argv is None else argv)])
  if args.from_json:
    with open(os.path.join(args.out_dir, f"{name}.json")) as f:
      result = json.load(f)
    partial = " (partial: the rows run so far)" if result.get("partial") else ""
    _report.write(name, result, markdown(result, command + partial), out_dir=args.out_dir)
    plot(result, os.path.join(args.out_dir, f"{name}.png"))
    return result

  def partial(rows, float_bpb):  # results so far, in case the sweep is cut short
    part = {"config": merged_config(cfg, rows), "rows": rows, "float_bpb": float_bpb,
            "partial": True, "eval_windows": cfg.eval_windows, "test_windows": "the",
            "machine": {"device": str(jax.devices()[0]), "cpus": os.cpu_count(),
                        "jax": jax.__version__, "load_average_1min_at_end": os.getloadavg()[0]},
            "total_seconds": time.time() - start}
    _report.write(name, part, markdown(part, command + " (partial)"), out_dir=args.out_dir)

  saved = (resumable_rows(cfg, os.path.join(args.out_dir, f"{name}.json"))
           if args.resume or args.methods is not None else {})
  kept, done = split_saved(cfg, saved, args.resume)
  result = run(cfg, on_row=partial, done=done, kept=kept)
  result["total_seconds"] = time.time() - start
  md = markdown(result, command)
  return _report.finish(name, result, md, args.out_dir, plot)


if __name__ == "__main__":
  main()
