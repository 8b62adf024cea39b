"""Mixed precision on the cached LM teacher: AdaBits (one model at W8/W4/W2) and FracBits
(learnable fractional weight bits at the BitOPs of uniform W3).

Layout as in ``lm_qat``: every weight site of the blocks gets the weight quantizer under test
and an 8-bit LSQ activation quantizer on its input (signed or unsigned from the float
activations at init); the output ``head`` is W8A8, the embeddings stay float, attention's
activation x activation products stay float. Every model starts from the teacher
(``cj.init_from`` on 32 train windows) and takes ``steps`` AdamW steps of ``batch_size`` train
windows (``lm_qat.tx_for``: warmup-cosine, no weight decay on quantizer state; the batches of
seed ``s`` are ``lm_qat``'s, so a separate LSQ model here is ``lm_qat``'s LSQ row at its bits).

* AdaBits (``compressjax.mixed.Switchable`` / ``at_bits``): the block weights are LSQ with one
  learned step per bit-width in ``adabits_bits`` (the switchable clip level), the weights shared;
  one joint fine-tune whose loss is the mean over the bit-widths (AdamW is invariant to the
  loss scale, so the mean equals the paper's sum with a matching lr), each step running every
  bit-width once; evaluated at each bit-width. Baseline: one model per bit-width fine-tuned
  alone with the same quantizers and the same number of steps (the joint run costs as much as
  the separate ones together). The activations are a single 8-bit LSQ quantizer shared by
  every switch (the paper switches the activation clip too; here only weights switch).
* FracBits (``compressjax.mixed.FracBits``, ``fracbits.harden``): the block weights get a
  learnable bit-width per layer in ``[min_bits, max_bits]`` starting at ``target + 0.5``,
  interpolating a per-channel absmax quantizer (``Uniform``: its grid at every bit-width comes
  from the weight itself; LSQ's learned step is specific to one bit-width, so it cannot be
  interpolated). ``search_fraction`` of the steps minimise ``CE + |BitOPs / target - 1|``
  (lambdas: SGD with momentum 0.9 at ``bits_lr``; Adam would move every lambda at the same
  speed whatever its cost), then the bits are hardened to within 1% of the budget and the rest
  of the steps fine-tune the integer model (lr continuing from the cosine where the search
  stopped). Baseline: uniform W3 with the same quantizers and all the steps. The budget is the
  BitOPs (``sum MACs * w_bits * a_bits``) of uniform W3A8 with the W8A8 head.

Reported: test bits per byte of the SERVED models (``cj.export``) on the first ``eval_windows``
test windows, mean +- sd over seeds, and the FracBits bits per layer.

  python -m experiments.lm_mixed            # results/lm_mixed.{json,md,png}
  python -m experiments.lm_mixed --quick    # quick teacher, 1 seed, 3 steps: lm_mixed_quick.*
  python -m experiments.lm_mixed --resume   # keeps the rows of an interrupted run
"""

from __future__ import annotations

import argparse
import itertools
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax import cost
from compressjax.core import Rule
from compressjax.core.compress import SITE_PARAMS
from compressjax.core.matching import UnusedRuleWarning
from compressjax.mixed import (BitAllocation, Budget, FracBits, Switchable, SwitchableBN,
                               at_bits, rules_from_json)
from compressjax.mixed import fracbits as fb
from compressjax.quant.granularity import PER_CHANNEL
from compressjax.quant.recipes import recipe
from compressjax.quant.uniform import Uniform
from experiments import _report
from experiments.lm_common import (batches, load_corpus, require_teacher, variables_bpb,
                                   variables_nats)
from experiments.lm_ptq import serve_and_eval
from experiments.lm_qat import bit_pairs, bpb_of, method_gaps, resumable_rows, tx_for

HEAD = "^head/"
A_BITS = 8


@dataclasses.dataclass(frozen=True)
class Config:
  teacher: str = "teacher"
  seeds: tuple[int, ...] = (0, 1, 2)
  adabits_bits: tuple[int, ...] = (8, 4, 2)
  separate_bits: tuple[int, ...] | None = None  # separate models' bit-widths (None: adabits')
  target_bits: int = 3
  min_bits: int = 2
  max_bits: int = 8
  search_fraction: float = 0.8
  bits_lr: float = 0.2
  steps: int = 100
  batch_size: int = 16
  lr: float = 5e-4
  warmup: int = 15
  eval_windows: int = 512
  parts: tuple[str, ...] = ("fracbits", "adabits")


FULL = Config()
QUICK = Config(teacher="teacher_quick", seeds=(0,), adabits_bits=(8, 2), separate_bits=(2,),
               steps=3, batch_size=4, warmup=1, eval_windows=16)


# --- models -----------------------------------------------------------------------------------


def lsq(w_bits: int, a_bits: int):
  """LSQ weights at ``w_bits``, LSQ activations at ``a_bits`` with the sign from init."""
  weight, act = recipe("lsq", w_bits, a_bits)
  return weight, act.replace(signed=None)


def absmax(w_bits: int, a_bits: int):
  """Per-channel absmax weights (FracBits' interpolated base), LSQ activations."""
  return Uniform(bits=w_bits, granularity=PER_CHANNEL), lsq(w_bits, a_bits)[1]


def compressed(model, weight, method, *, interceptors=()):
  """``model`` with ``weight`` at the block sites and ``method``'s activations at A_BITS; the
  head at W8A8 of ``method``."""
  head_w, head_a = method(8, 8)
  rules = [Rule(pattern=HEAD, weight=head_w, act=head_a),
           Rule(pattern=".", weight=weight, act=method(8, A_BITS)[1])]
  return cj.compress(model, rules, interceptors=interceptors)


def adabits_model(model, bits_list: tuple[int, ...]):
  """Switchable LSQ weights over ``bits_list`` (one step each), active at the highest."""
  weight = Switchable(tuple(lsq(b, A_BITS)[0] for b in bits_list), bits_list[0])
  return compressed(model, weight, lsq, interceptors=(SwitchableBN(bits_list, bits_list[0]),))


# --- training -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every fine-tune of a run shares: the teacher, the data and the BitOPs budget."""

  model: Any
  params: Any
  train: np.ndarray
  init_batch: jax.Array
  data: tuple  # (example, test windows, check windows) for lm_ptq.serve_and_eval
  profile: cost.Profile
  budget: Budget


def start(m, s: Setup, params=None) -> dict:
  """Variables of ``m`` from float ``params`` (default the teacher's), its quantizer state
  initialised on the init batch."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    return cj.init_from(m, {"params": s.params if params is None else params}, s.init_batch,
                        train=False)


def fit(cfg: Config, s: Setup, v: dict, loss, seed: int, *, steps: int | None = None,
        skip: int = 0, tx=None, post=None) -> tuple[dict, dict]:
  """``steps`` (default ``cfg.steps``) optimizer steps on ``loss(params, rest, tokens)`` from
  variables ``v``; batches ``skip`` onwards of seed ``seed``'s train stream. ``post`` maps the
  params after each step (FracBits: clamp the lambdas). Returns the variables and train
  statistics (losses in nats)."""
  steps = cfg.steps if steps is None else steps
  rest = {k: val for k, val in v.items() if k != "params"}
  tx = tx or tx_for(cfg, v["params"])
  opt_state = tx.init(v["params"])
  post = post or (lambda p: p)

  @jax.jit
  def step(p, opt_state, tokens):
    value, grads = jax.value_and_grad(lambda p: loss(p, rest, tokens))(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return post(optax.apply_updates(p, updates)), opt_state, value

  p, losses, cpu = v["params"], [], time.process_time()
  stream = batches(s.train, cfg.batch_size, 100 + seed)
  for _ in range(skip):
    next(stream)
  for _, tokens in zip(range(steps), stream):
    p, opt_state, value = step(p, opt_state, tokens)
    losses.append(float(value))
  k = max(1, min(10, len(losses) // 5))
  return {**rest, "params": p}, {
      "train_loss_first": float(np.mean(losses[:k])),
      "train_loss_last": float(np.mean(losses[-k:])),
      "finite": bool(np.all(np.isfinite(losses))),
      "train_cpu_seconds": round(time.process_time() - cpu, 1)}


def ce(m):
  """Mean next-byte cross-entropy (nats) of compressed model ``m``."""
  return lambda p, rest, tokens: variables_nats(m, {**rest, "params": p}, tokens).mean()


def served(s: Setup, m, v, stats: dict, **row) -> dict:
  """A result row: ``row``, the train statistics (losses in bpb) and the served evaluation."""
  out = {**row, **{k.replace("loss", "bpb"): val / math.log(2) if "loss" in k else val
                   for k, val in stats.items()}}
  if not stats["finite"]:
    return {**out, "test_bpb": float("nan")}
  return {**out, **serve_and_eval(m, v, *s.data)}


# --- AdaBits --------------------------------------------------------------------------------


def run_adabits(cfg: Config, s: Setup, seed: int, done: dict) -> Iterator[dict]:
  """The joint model's row at every bit-width, then one separate model's per bit-width
  (``cfg.separate_bits``)."""
  bits = cfg.adabits_bits
  keys = [("joint", b, A_BITS, seed) for b in bits]
  if all(k in done for k in keys):
    yield from (done[k] for k in keys)
  else:
    m = adabits_model(s.model, bits)
    switched = [at_bits(m, b) for b in bits]
    loss = lambda p, rest, tokens: sum(ce(mb)(p, rest, tokens) for mb in switched) / len(bits)
    v, stats = fit(cfg, s, start(m, s), loss, seed)
    for b, mb in zip(bits, switched):
      yield served(s, mb, v, stats, part="adabits", method="joint", w_bits=b, a_bits=A_BITS,
                   seed=seed)
  for b in bits if cfg.separate_bits is None else cfg.separate_bits:
    if ("separate", b, A_BITS, seed) in done:
      yield done[("separate", b, A_BITS, seed)]
      continue
    m = adabits_model(s.model, (b,))
    v, stats = fit(cfg, s, start(m, s), ce(m), seed)
    yield served(s, m, v, stats, part="adabits", method="separate", w_bits=b, a_bits=A_BITS,
                 seed=seed)


# --- FracBits -------------------------------------------------------------------------------


def uniform_alloc(profile: cost.Profile, bits: int) -> BitAllocation:
  """``bits`` at every block site, the head at 8, every input at A_BITS."""
  w = {p: 8 if p.startswith("head/") else bits for p in profile.paths}
  return BitAllocation.create(w, {p: A_BITS for p in profile.paths}, method=f"uniform W{bits}")


def search_tx(cfg: Config, params):
  """``lm_qat.tx_for`` for everything but the lambdas; SGD with momentum for them."""
  label = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: "bits" if getattr(path[-1], "key", None) == fb.LAMBDA else "rest", p)
  return optax.multi_transform({"rest": tx_for(cfg, params),
                                "bits": optax.sgd(cfg.bits_lr, momentum=0.9)}, label)


def run_fracbits(cfg: Config, s: Setup, seed: int, done: dict) -> Iterator[dict]:
  """Uniform W``target`` for all the steps; FracBits search, harden, fine-tune the rest."""
  uniform = uniform_alloc(s.profile, cfg.target_bits)
  row = dict(part="fracbits", w_bits=cfg.target_bits, a_bits=A_BITS, seed=seed)
  key = ("uniform", cfg.target_bits, A_BITS, seed)
  if key in done:
    yield done[key]
  else:
    m = cj.compress(s.model, rules_from_json(uniform, method=absmax))
    v, stats = fit(cfg, s, start(m, s), ce(m), seed)
    yield {**served(s, m, v, stats, method="uniform", **row), **allocation_info(uniform, s)}
  if ("FracBits", cfg.target_bits, A_BITS, seed) in done:
    yield done[("FracBits", cfg.target_bits, A_BITS, seed)]
    return
  weight = FracBits(base=absmax(8, 8)[0], init_bits=cfg.target_bits + 0.5,
                    min_bits=cfg.min_bits, max_bits=cfg.max_bits)
  m = compressed(s.model, weight, absmax)
  v = start(m, s)
  fb.check_budget(m, v["params"], s.profile, s.budget)
  n = max(1, round(cfg.search_fraction * cfg.steps))
  search_loss = lambda p, rest, tokens: ce(m)(p, rest, tokens) + s.budget.penalty(
      fb.search_cost(m, p, s.profile, s.budget))
  v, search_stats = fit(cfg, s, v, search_loss, seed, steps=n, tx=search_tx(cfg, v["params"]),
                        post=lambda p: fb.clamp_lambdas(m, p))
  lambdas = {p: round(float(b), 3) for p, b in fb.site_bits(m, v["params"], s.profile)[0].items()
             if not p.startswith("head/")}
  search_cost = float(fb.search_cost(m, v["params"], s.profile, s.budget))
  alloc = fb.harden(m, v["params"], s.profile, s.budget)
  fixed = cj.compress(s.model, rules_from_json(alloc, method=absmax))
  floats = {k: val for k, val in v["params"].items() if k != SITE_PARAMS}
  w = fb.transfer(v, start(fixed, s, floats))
  scale = (1 + math.cos(math.pi * n / cfg.steps)) / 2  # the cosine where the search stopped
  rest_cfg = dataclasses.replace(cfg, lr=cfg.lr * scale, steps=max(1, cfg.steps - n), warmup=0)
  w, stats = fit(rest_cfg, s, w, ce(fixed), seed, skip=n, tx=tx_for(rest_cfg, w["params"]))
  stats = {**stats, "finite": stats["finite"] and search_stats["finite"],
           "train_cpu_seconds": stats["train_cpu_seconds"] + search_stats["train_cpu_seconds"]}
  yield {**served(s, fixed, w, stats, method="FracBits", **row), **allocation_info(alloc, s),
         "search_lambdas": lambdas, "search_steps": n,
         "search_cost_relative_error": s.budget.relative_error(search_cost),
         "search_bpb_first": search_stats["train_loss_first"] / math.log(2),
         "search_bpb_last": search_stats["train_loss_last"] / math.log(2)}


def allocation_info(alloc: BitAllocation, s: Setup) -> dict:
  c = alloc.cost(s.profile, s.budget)
  return {"allocation": alloc.to_dict(), "bitops": c, "target_bitops": s.budget.target,
          "relative_error": s.budget.relative_error(c)}


# --- the run ------------------------------------------------------------------------------------


def run(cfg: Config, on_row=None, done: dict | None = None) -> dict:
  """Every seed of ``cfg``: FracBits (the cheaper part, first so that a run cut short has it)
  then AdaBits. Rows found in ``done`` are reused, not rerun; ``on_row`` gets the result so far
  (``partial``) after each row."""
  model, params, info = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  test = corpus["test"][:cfg.eval_windows]
  example = jnp.asarray(test[:1, :-1], jnp.int32)
  profile = cost.profile(model, example)
  s = Setup(model, params, corpus["train"], jnp.asarray(corpus["train"][:32, :-1], jnp.int32),
            (example, test, jnp.asarray(test[:8, :-1], jnp.int32)), profile,
            Budget(target=uniform_alloc(profile, cfg.target_bits).cost(profile, Budget(1.0))))
  result = {"config": dataclasses.asdict(cfg), "teacher": info.get("config"), "rows": [],
            "float_bpb": variables_bpb(model, {"params": params}, test),
            "eval_windows": int(len(test)), "test_windows": int(len(corpus["test"])),
            "sites": [{"path": p.path, "macs": p.macs, "params": p.params} for p in profile.sites]}
  done = dict(done or {})
  parts = {"fracbits": run_fracbits, "adabits": run_adabits}
  for seed in cfg.seeds:
    for row in itertools.chain(*(parts[p](cfg, s, seed, done) for p in cfg.parts)):
      row.setdefault("steps", cfg.steps)
      result["rows"].append(row)
      print({k: v for k, v in row.items() if k != "allocation"}, flush=True)
      if on_row is not None:
        on_row({**result, "partial": True, "machine": machine()})
  return {**result, "machine": machine()}


def machine() -> dict:
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
          "cpus": os.cpu_count(), "jax": jax.__version__,
          "load_average_1min_at_end": os.getloadavg()[0]}


# --- report -----------------------------------------------------------------------------------


def layer_bits(rows: list[dict]) -> dict[str, list[int]]:
  """Per block site, the FracBits weight bits of every seed."""
  out: dict[str, list[int]] = {}
  for r in rows:
    if r["method"] == "FracBits":
      for layer in r["allocation"]["layers"]:
        if not layer["path"].startswith("head/"):
          out.setdefault(layer["path"], []).append(layer["w_bits"])
  return out


def adabits_section(ada: list[dict], n: int) -> str:
  """The AdaBits table: joint vs separate at every bit-width, and their differences."""
  bits = sorted({r["w_bits"] for r in ada}, reverse=True)
  md = ("## AdaBits: one joint model vs one model per bit-width (LSQ weights)\n\n"
        "Joint: one fine-tune, each step the mean loss over the bit-widths (one LSQ step per "
        "bit-width per layer, shared weights and a shared A8 activation quantizer), run at each "
        "bit-width. Separate: one fine-tune per bit-width, the same number of steps.\n\n")
  md += _report.markdown_table(
      ["model"] + [f"W{b}A{A_BITS}" for b in bits],
      [[m] + [_report.mean_sd_cell(bpb_of(ada, m, b, A_BITS), n) for b in bits] for m in ("joint", "separate")])
  pairs = [(b, bpb_of(ada, "joint", b, A_BITS), bpb_of(ada, "separate", b, A_BITS)) for b in bits]
  return md + "\nJoint - separate (mean bpb): " + ", ".join(
      f"W{b} {np.mean(j) - np.mean(sep):+.4f}" for b, j, sep in pairs if j and sep) + "\n"


def markdown(result: dict, command: str) -> str:
  rows, cfg = result["rows"], result["config"]
  n = len(cfg["seeds"])
  ada = [r for r in rows if r["part"] == "adabits"]
  frac = [r for r in rows if r["part"] == "fracbits"]
  bits = sorted({r["w_bits"] for r in ada}, reverse=True)
  md = "# LM mixed precision: AdaBits and FracBits (served test bits per byte)\n\n"
  steps = lambda part: "/".join(str(k) for k in sorted(
      {r.get("steps", cfg["steps"]) for r in rows if r["part"] == part}))
  sd_note = " (mean ± sd)" if n > 1 else " (no sd: one seed)"
  md += (f"Every model: AdamW steps x {cfg['batch_size']} windows from the teacher (AdaBits "
         f"{steps('adabits') or '-'} steps, FracBits {steps('fracbits') or '-'}; linear warmup "
         f"over 15% of them), lr {cfg['lr']}; {n} seed(s){sd_note}; "
         f"first {result['eval_windows']} of {result['test_windows']} test windows; block sites "
         f"at A{A_BITS} (LSQ), head W8A8, embeddings float. Float teacher on the same windows: "
         f"{result['float_bpb']:.4f} bpb.\n\n")
  if ada:
    md += adabits_section(ada, n)
  if frac:
    target = frac[0]["target_bitops"]
    md += (f"\n## FracBits vs uniform W{cfg['target_bits']}A{A_BITS} at its BitOPs "
           f"({target / 1e6:,.1f} M per window)\n\n"
           f"Per-channel absmax weights (both rows). FracBits: {cfg['search_fraction']:.0%} of the "
           f"steps search (lambdas in [{cfg['min_bits']}, {cfg['max_bits']}] from "
           f"{cfg['target_bits'] + 0.5}, SGD lr {cfg['bits_lr']}, penalty |BitOPs/target - 1|), "
           "then hardened to within 1% of the budget and fine-tuned at those bits for the "
           "rest.\n\n")
    table = []
    for m in ("uniform", "FracBits"):
      sel = [r for r in frac if r["method"] == m]
      if sel:
        errs = [100 * r["relative_error"] for r in sel]
        table.append([m, _report.mean_sd_cell([r["test_bpb"] for r in sel], n),
                      f"{min(errs):+.2f} .. {max(errs):+.2f}"])
    md += _report.markdown_table(["model", "served test bpb", "BitOPs vs budget (%, min..max)"],
                                 table)
    per_layer = layer_bits(frac)
    if per_layer:
      seeds = [r["seed"] for r in frac if r["method"] == "FracBits"]
      lam = {r["seed"]: r["search_lambdas"] for r in frac if r["method"] == "FracBits"}
      md += ("\nFracBits weight bits per layer (hardened; in brackets the fractional bits at the "
             "end of the search), one column per seed; MACs per window:\n\n")
      md += _report.markdown_table(
          ["layer", "MACs"] + [f"seed {s}" for s in seeds],
          [[p, f"{macs(result, p):,}"] + [f"{b} ({lam[s][p]:.2f})" for s, b in zip(seeds, v)]
           for p, v in per_layer.items()])
      same = [s for s, r in zip(seeds, (r for r in frac if r["method"] == "FracBits"))
              if all(l["w_bits"] == cfg["target_bits"] for l in r["allocation"]["layers"]
                     if not l["path"].startswith("head/"))]
      md += (f"\nSeeds whose hardened allocation is exactly uniform W{cfg['target_bits']}: "
             f"{same or 'none'} (there FracBits and uniform differ only in the training: "
             "the search steps run the interpolated bit-widths, only the rest the integer "
             "ones).\n")
  md += method_gaps(rows)
  worst = max((r.get("served_minus_fake_max_abs_logit", 0.0) for r in rows), default=0.0)
  worst_bpb = max((abs(r.get("served_minus_fake_bpb_check", 0.0)) for r in rows), default=0.0)
  md += (f"\nServed vs fake on 8 windows: largest |logit difference| {worst:.2e}, largest |bpb "
         f"difference| {worst_bpb:.1e} (int8 dot path vs float matmul rounding, see lm_qat).\n")
  if result.get("processes"):
    md += (f"\nRun as {len(result['processes'])} processes, their rows merged into this file "
           "(`--merge`): " + "; ".join(
               f"`python -m experiments.lm_mixed --parts {q['part']} --seeds "
               f"{' '.join(map(str, q['seeds']))} --steps {steps(q['part'])}` "
               f"({q['total_seconds']} s)" for q in result["processes"]) + ".\n")
  cpu = sum(r.get("train_cpu_seconds", 0.0) for r in rows if r["part"] == "fracbits"
            or r["method"] == "separate" or r["w_bits"] == bits[0])
  m = result["machine"]
  md += (f"\n{m['device']} ({m['cpus']} cores, load {m['load_average_1min_at_end']:.1f}), jax "
         f"{m['jax']}; training CPU {cpu:.0f} s, total {result.get('total_seconds', 0):.0f} s."
         + ("" if result.get("processes") else f" `{command}`") + "\n")
  return md


def macs(result: dict, path: str) -> int:
  return int(next(s["macs"] for s in result["sites"] if s["path"] == path))


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = result["rows"]
  ada = [r for r in rows if r["part"] == "adabits"]
  frac = [r for r in rows if r["part"] == "fracbits"]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for m in ("joint", "separate"):
    bits = [b for b in sorted({r["w_bits"] for r in ada}) if bpb_of(ada, m, b, A_BITS)]
    stats = [_report.mean_sd(bpb_of(ada, m, b, A_BITS)) for b in bits]
    axes[0].errorbar(bits, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o",
                     capsize=3, label=m)
  axes[0].axhline(result["float_bpb"], color="k", ls="--", label="float")
  axes[0].set(xlabel="weight bits (A8)", ylabel="served test bpb", title="AdaBits")
  axes[0].invert_xaxis()
  axes[0].legend(fontsize=8)
  for i, m in enumerate(("uniform", "FracBits")):
    vals = [r["test_bpb"] for r in frac if r["method"] == m]
    if vals:
      mean, sd = _report.mean_sd(vals)
      axes[1].bar(i, mean, yerr=sd, capsize=3)
      axes[1].scatter([i] * len(vals), vals, color="k", s=8, zorder=3)
  axes[1].set_xticks([0, 1], ["uniform W3A8", "FracBits"])
  axes[1].set(ylabel="served test bpb", title="at the BitOPs of uniform W3A8")
  lo = min((r["test_bpb"] for r in frac), default=0.0)
  axes[1].set_ylim(max(0.0, lo - 0.1), None)
  per_layer = layer_bits(frac)
  names = list(per_layer)
  for j, (p, v) in enumerate(per_layer.items()):
    axes[2].scatter([j] * len(v), v, color="C1", s=12)
  axes[2].bar(range(len(names)), [np.mean(v) for v in per_layer.values()], color="C1", alpha=0.4)
  axes[2].axhline(3, color="k", ls="--", lw=1)
  axes[2].set_xticks(range(len(names)), [p.replace("/kernel", "") for p in names], rotation=90,
                     fontsize=6)
  axes[2].set(ylabel="weight bits", title="FracBits bits per layer (dots: seeds)")
  _report.save_figure(fig, path)


def merged(base: dict, paths: list[str]) -> dict:
  """``base`` with the rows of every part that the runs at ``paths`` hold replaced by theirs;
  each run is recorded in ``processes`` and its config in ``part_configs``."""
  runs = []
  for path in paths:
    with open(path) as f:
      runs.append((os.path.dirname(os.path.abspath(path)), json.load(f)))
  parts = {r["part"] for _, run in runs for r in run["rows"]}
  out = {**base, "rows": [r for r in base["rows"] if r["part"] not in parts],
         "processes": [q for q in base.get("processes", []) if q["part"] not in parts],
         "part_configs": dict(base.get("part_configs", {}))}
  for out_dir, run in runs:
    run_parts = list(dict.fromkeys(r["part"] for r in run["rows"]))
    out["rows"] += run["rows"]
    out["processes"].append({
        "part": " ".join(run_parts), "out_dir": out_dir, "seeds": run["config"]["seeds"],
        "rows": len(run["rows"]), "finished": not run.get("partial", False),
        "total_seconds": round(run.get("total_seconds", 0)),
        "load_average_1min_at_end": run["machine"]["load_average_1min_at_end"]})
    out["part_configs"].update({p: run["config"] for p in run_parts})
  return out


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, nargs="+", default=None)
  parser.add_argument("--steps", type=int, default=None,
                      help="fine-tune steps (warmup scaled to 15%% of them, as 15 of 100)")
  parser.add_argument("--parts", nargs="+", choices=FULL.parts, default=None,
                      help="run only these parts (default both, FracBits first)")
  parser.add_argument("--resume", action="store_true",
                      help="reuse the rows of the existing (partial) JSON with the same setting")
  parser.add_argument("--from-json", action="store_true",
                      help="rewrite the Markdown/PNG from the existing JSON, no run")
  parser.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                      help="replace the rows of the parts these runs hold (each run with its own "
                      "--out-dir) in --out-dir's results, and rewrite its Markdown/PNG")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  if args.seeds is not None:
    cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
  if args.steps is not None:
    cfg = dataclasses.replace(cfg, steps=args.steps, warmup=max(1, round(0.15 * args.steps)))
  if args.parts is not None:
    cfg = dataclasses.replace(cfg, parts=tuple(args.parts))
  name = "lm_mixed_quick" if args.quick else "lm_mixed"
  command = "python -m experiments.lm_mixed" + (" --quick" if args.quick else "") + (
      f" --steps {args.steps}" if args.steps is not None else "")
  json_path = os.path.join(args.out_dir, f"{name}.json")
  if args.from_json or args.merge:
    with open(json_path) as f:
      result = json.load(f)
    if args.merge:
      result = merged(result, args.merge)
    partial = " (partial: the rows run so far)" if result.get("partial") else ""
    _report.write(name, result, markdown(result, command + partial), out_dir=args.out_dir)
    plot(result, os.path.join(args.out_dir, f"{name}.png"))
    return result
  t0 = time.time()

  def partial(part):  # results so far, in case the run is cut short
    part = {**part, "total_seconds": time.time() - t0}
    _report.write(name, part, markdown(part, command + " (partial)"), out_dir=args.out_dir)

  done = resumable_rows(cfg, json_path) if args.resume else {}
  result = run(cfg, on_row=partial, done=done)
  result["total_seconds"] = time.time() - t0
  md = markdown(result, command)
  return _report.finish(name, result, md, args.out_dir, plot)


if __name__ == "__main__":
  main()
