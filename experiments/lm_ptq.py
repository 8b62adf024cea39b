"""Post-training weight quantization of the cached LM teacher: round-to-nearest vs GPTQ.

Every weight site of the LM (``block*/attn/{query,key,value,out}``, ``block*/mlp/{fc1,fc2}``)
is quantized at ``bits`` with symmetric signed codes (``scale = absmax / (2^(b-1) - 1)``), per
output channel or per group of 32 / 128 contraction rows; the output ``head`` stays at 8 bits
(RTN per channel) and the embeddings (a gather, not a site) stay float. Activations are float
(weight-only, W*A16).

* RTN: ``compressjax.quant.Uniform`` (dynamic ranges from the weight itself).
* GPTQ (``compressjax.quant.gptq``): Hessians ``2 X^T X`` from the float teacher's inputs at each
  site (``compressjax.quant.gptq_apply.site_hessians``) on ``cal_windows`` random windows of the
  train split; act-order on / off; served through ``gptq_apply.GivenCodes``, a weight quantizer
  whose export writes GPTQ's codes. RTN is deterministic; GPTQ's "seeds" are different
  calibration subsets (mean +- sd over them).

Reported: test bits per byte of the SERVED model (``cj.export``; weights go through the kernel
dispatcher), on the first ``eval_windows`` test windows, with the largest |served - fake| logit
and the served - fake bits per byte on one batch of 8 windows for every configuration.

  python -m experiments.lm_ptq            # results/lm_ptq.{json,md,png}
  python -m experiments.lm_ptq --quick    # the quick teacher, few configs: lm_ptq_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.matching import UnusedRuleWarning
from compressjax.quant import gptq_apply
from compressjax.quant.granularity import PER_CHANNEL, per_group
from compressjax.quant.uniform import Uniform
from experiments import _report
from experiments.lm_common import load_corpus, require_teacher, variables_bpb

HEAD = "^head/"


@dataclasses.dataclass(frozen=True)
class Config:
  teacher: str = "teacher"
  eval_windows: int = 1024
  rtn_bits: tuple[int, ...] = (8, 4, 3, 2)
  groups: tuple[int | None, ...] = (None, 32, 128)  # None: per channel
  gptq_bits: tuple[int, ...] = (4, 3, 2)
  gptq_groups: tuple[int | None, ...] = (None, 128)
  seeds: int = 3
  cal_windows: int = 128
  cal_batch: int = 32
  damp: float = 0.01


FULL = Config()
# CI-sized: each path once (RTN and GPTQ with act-order off/on at one setting, two calibration
# subsets for the sd), few windows.
QUICK = Config(teacher="teacher_quick", eval_windows=16, rtn_bits=(4,), groups=(None,),
               gptq_bits=(4,), gptq_groups=(None,), seeds=2, cal_windows=16, cal_batch=8)


def granularity(group):
  return PER_CHANNEL if group is None else per_group(group)


def gran_name(group) -> str:
  return "channel" if group is None else f"g{group}"


def rules_for(weight) -> list[Rule]:
  return [Rule(pattern=HEAD, weight=Uniform(bits=8, granularity=PER_CHANNEL)),
          Rule(pattern=".", weight=weight)]


def compressed(model, weight, params, example):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    m = cj.compress(model, rules_for(weight))
    return m, cj.init_from(m, {"params": params}, example, train=False)


def serve_and_eval(m, v, example, test, check) -> dict:
  """Export, served test bpb, and the largest |served - fake| logit on ``check``."""
  start = time.time()
  sm, sv = cj.export(m, v, example, train=False)
  fake = m.apply(v, check)
  served = sm.apply(sv, check)
  size = cj.size_report(sv)
  nats = lambda logits: float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits[:, :-1], check[:, 1:]))) / math.log(2)
  return {"test_bpb": variables_bpb(sm, sv, test),
          "served_minus_fake_max_abs_logit": float(jnp.max(jnp.abs(served - fake))),
          "served_minus_fake_bpb_check": nats(served) - nats(fake),
          "served_bytes": int(getattr(size, "total_bytes", 0) or 0),
          "seconds": round(time.time() - start, 1)}


def run(cfg: Config) -> dict:
  model, params, info = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  test = corpus["test"][:cfg.eval_windows]
  example = jnp.asarray(test[:1, :-1], jnp.int32)
  check = jnp.asarray(test[:8, :-1], jnp.int32)
  rows = [{"method": "float", "bits": 32, "granularity": "-", "act_order": None, "seed": None,
           "test_bpb": variables_bpb(model, {"params": params}, test)}]
  print(f"float: {rows[0]['test_bpb']:.4f}", flush=True)
  for bits in cfg.rtn_bits:
    for group in cfg.groups:
      m, v = compressed(model, Uniform(bits=bits, granularity=granularity(group)), params, example)
      rows.append({"method": "rtn", "bits": bits, "granularity": gran_name(group),
                   "act_order": None, "seed": None, **serve_and_eval(m, v, example, test, check)})
      print(rows[-1], flush=True)
  select = lambda s: not s.name.startswith("head/")
  for seed in range(cfg.seeds):
    order = np.random.default_rng(seed).choice(len(corpus["train"]), cfg.cal_windows, replace=False)
    cal = corpus["train"][np.sort(order)][:, :-1].astype(np.int32)
    batches = [cal[i:i + cfg.cal_batch] for i in range(0, len(cal), cfg.cal_batch)]
    start = time.time()
    hessians = gptq_apply.site_hessians(model, {"params": params}, batches, select, train=False)
    hessian_seconds = time.time() - start
    for bits in cfg.gptq_bits:
      for group in cfg.gptq_groups:
        m, v0 = compressed(model, gptq_apply.GivenCodes(bits=bits, group_size=group), params,
                           example)
        for act_order in (False, True):
          start = time.time()
          codes = gptq_apply.gptq_codes(model, {"params": params}, hessians, example, bits=bits,
                                        group_size=group, act_order=act_order, damp=cfg.damp,
                                        train=False)
          gptq_seconds = time.time() - start
          v = gptq_apply.set_given_codes(v0, codes)
          rows.append({"method": "gptq", "bits": bits, "granularity": gran_name(group),
                       "act_order": act_order, "seed": seed,
                       "hessian_seconds": round(hessian_seconds, 1),
                       "gptq_seconds": round(gptq_seconds, 1),
                       **serve_and_eval(m, v, example, test, check)})
          print(rows[-1], flush=True)
  return {"config": dataclasses.asdict(cfg), "teacher": info.get("config"),
          "rows": rows, "summary": summarize(rows),
          "eval_windows": int(len(test)), "test_windows": int(len(corpus["test"])),
          "machine": {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
                      "cpus": os.cpu_count(), "jax": jax.__version__,
                      "load_average_1min_at_end": os.getloadavg()[0]}}


def summarize(rows: list[dict]) -> list[dict]:
  """One entry per (method, bits, granularity, act_order): mean / sd over seeds."""
  groups: dict[tuple, list[float]] = {}
  for r in rows:
    groups.setdefault((r["method"], r["bits"], r["granularity"], r["act_order"]), []).append(
        r["test_bpb"])
  out = []
  for (method, bits, gran, ao), values in groups.items():
    mean, sd = _report.mean_sd(values)
    out.append({"method": method, "bits": bits, "granularity": gran, "act_order": ao,
                "mean_bpb": mean, "sd_bpb": sd, "n": len(values)})
  return out


def label(s: dict) -> str:
  if s["method"] == "gptq":
    return f"GPTQ {s['granularity']}" + (" act-order" if s["act_order"] else "")
  return f"{s['method'].upper()} {s['granularity']}" if s["method"] == "rtn" else "float"


def markdown(result: dict, command: str) -> str:
  summary = result["summary"]
  float_bpb = next(s["mean_bpb"] for s in summary if s["method"] == "float")
  labels = list(dict.fromkeys(label(s) for s in summary if s["method"] != "float"))
  bits = sorted({s["bits"] for s in summary if s["method"] != "float"}, reverse=True)
  cell = {}
  for s in summary:
    text = f"{s['mean_bpb']:.4f}"
    if s["n"] > 1:
      text += f" ± {s['sd_bpb']:.4f}"
    cell[(label(s), s["bits"])] = text
  md = "# LM post-training weight quantization: RTN vs GPTQ (served test bits per byte)\n\n"
  md += (f"Float teacher: {float_bpb:.4f} bpb on the first {result['eval_windows']} of "
         f"{result['test_windows']} test windows. Weight-only (activations float), head at W8 "
         "RTN per channel, embeddings float. GPTQ: mean ± sd over "
         f"{result['config']['seeds']} calibration subsets of {result['config']['cal_windows']} "
         "train windows.\n\n")
  md += _report.markdown_table(["method"] + [f"W{b}" for b in bits],
                               [[lab] + [cell.get((lab, b), "-") for b in bits] for lab in labels])
  worst = max(r.get("served_minus_fake_max_abs_logit", 0.0) for r in result["rows"])
  md += f"\nLargest |served - fake| logit over all configurations (8 windows): {worst:.2e}.\n"
  md += "\n" + comparison(summary) + "\n"
  md += "\n" + act_order_comparison(result["rows"]) + "\n"
  m = result["machine"]
  md += (f"\n{m['device']} ({m['cpus']} cores, load {m['load_average_1min_at_end']:.1f}), "
         f"jax {m['jax']}, {result['total_seconds']:.0f} s. `{command}`\n")
  return md


def comparison(summary: list[dict]) -> str:
  """GPTQ vs RTN at the same bits and granularity: difference in units of GPTQ's seed sd."""
  lines = ["GPTQ - RTN (same bits and granularity), in bpb and in GPTQ seed sd:", ""]
  rtn = {(s["bits"], s["granularity"]): s["mean_bpb"] for s in summary if s["method"] == "rtn"}
  for s in summary:
    if s["method"] != "gptq" or (s["bits"], s["granularity"]) not in rtn:
      continue
    d = s["mean_bpb"] - rtn[(s["bits"], s["granularity"])]
    z = abs(d) / s["sd_bpb"] if s["sd_bpb"] > 0 else float("inf")
    lines.append(f"- W{s['bits']} {s['granularity']}{' act-order' if s['act_order'] else ''}: "
                 f"{d:+.4f} bpb ({z:.0f} sd{', > 3 sd' if z > 3 else ', within 3 sd'})")
  return "\n".join(lines)


def act_order_comparison(rows: list[dict]) -> str:
  """GPTQ act-order on - off on the same calibration subset (paired by seed)."""
  lines = ["GPTQ act-order on - off, paired by calibration subset (mean ± sd of the paired "
           "differences; the difference in pooled sd of the two arms in parentheses):", ""]
  gptq = [r for r in rows if r["method"] == "gptq"]
  for bits in sorted({r["bits"] for r in gptq}, reverse=True):
    for gran in dict.fromkeys(r["granularity"] for r in gptq):
      arm = lambda ao: {r["seed"]: r["test_bpb"] for r in gptq
                        if (r["bits"], r["granularity"], r["act_order"]) == (bits, gran, ao)}
      off, on = arm(False), arm(True)
      seeds = sorted(set(off) & set(on))
      if len(seeds) < 2:
        continue
      d = np.array([on[s] - off[s] for s in seeds])
      pooled = math.sqrt((np.var([off[s] for s in seeds], ddof=1)
                          + np.var([on[s] for s in seeds], ddof=1)) / 2)
      lines.append(f"- W{bits} {gran}: {d.mean():+.4f} ± {d.std(ddof=1):.4f} bpb "
                   f"({abs(d.mean()) / pooled:.1f} pooled sd) over {len(seeds)} subsets")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6.5, 4))
  summary = result["summary"]
  for lab in dict.fromkeys(label(s) for s in summary if s["method"] != "float"):
    pts = sorted((s["bits"], s["mean_bpb"], s["sd_bpb"]) for s in summary if label(s) == lab)
    ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                capsize=3, label=lab, linestyle="--" if lab.startswith("GPTQ") else "-")
  float_bpb = next(s["mean_bpb"] for s in summary if s["method"] == "float")
  ax.axhline(float_bpb, color="k", lw=0.8, label="float")
  ax.set_yscale("log")
  ax.set_xlabel("weight bits")
  ax.set_ylabel("served test bits per byte (log)")
  ax.legend(fontsize=7)
  ax.set_title("LM PTQ: RTN vs GPTQ")
  _report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="quick teacher, few configs")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  parser.add_argument("--from-json", action="store_true",
                      help="rewrite the Markdown/PNG from the existing JSON, no run")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  name = "lm_ptq_quick" if args.quick else "lm_ptq"
  if args.from_json:  # rebuild the report from an earlier run's JSON
    with open(os.path.join(args.out_dir, f"{name}.json")) as f:
      result = json.load(f)
  else:
    start = time.time()
    result = run(cfg)
    result["total_seconds"] = time.time() - start
  md = markdown(result, "python -m experiments.lm_ptq" + (" --quick" if args.quick else ""))
  return _report.finish(name, result, md, args.out_dir, plot)


if __name__ == "__main__":
  main()
