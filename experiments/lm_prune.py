"""Pruning and distillation of the cached LM teacher, several seeds.

* Pruning (``compressjax.prune``): magnitude pruning of every block kernel (attention
  query/key/value/out, MLP fc1/fc2; the head and embeddings stay dense), fine-tuned ``steps``
  AdamW steps with the pruner in the optax chain (masks held in its state):
  50% unstructured (per layer) and 2:4 along each kernel's input axis, one-shot before the
  fine-tune; 75% one-shot, and 75% gradual (Zhu & Gupta's cubic schedule from 0 to 75% over the
  first ``gradual_fraction`` of the steps, masks recomputed every ``mask_frequency`` steps).
  "dense" is the teacher fine-tuned the same steps without a pruner: what pruning is compared to.
* Distillation (``compressjax.distill``): a half-width student (width 64, same depth, heads and
  context) trained from scratch for ``kd_steps`` steps with cross-entropy only vs Hinton's
  logit KD from the teacher (``hinton_loss``: ``(1 - alpha) CE + alpha T^2 KL``).

A seed sets the order of the training batches (and the student's initialization). Reported:
float test bits per byte on the first ``eval_windows`` test windows (pruned weights are zeros in
float kernels), mean ± sd over the seeds, and the measured sparsity of the pruned kernels. The
JSON is rewritten after every run, so an interrupted sweep keeps what finished; ``--resume``
reuses those rows.

  python -m experiments.lm_prune            # results/lm_prune.{json,md}
  python -m experiments.lm_prune --resume   # after an interruption
  python -m experiments.lm_prune --from-json  # the Markdown again, from the JSON
  python -m experiments.lm_prune --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax import distill, prune
from compressjax.models.lm import LM
from experiments import _report
from experiments.lm_common import (batches, bits_per_byte, load_corpus, make_train_step,
                                   model_fields, param_count, require_teacher, saved_rows)


@dataclasses.dataclass(frozen=True)
class Config:
  teacher: str = "teacher"
  seeds: tuple[int, ...] = (0, 1, 2)
  steps: int = 300
  batch_size: int = 16
  lr: float = 5e-4
  gradual_fraction: float = 0.5
  mask_frequency: int = 10
  kd_steps: int = 1000
  kd_lr: float = 3e-3
  kd_temperature: float = 1.0
  kd_alpha: float = 0.5
  eval_windows: int = 1024
  patterns: tuple[str, ...] = ("dense", "50% unstructured", "2:4", "75% one-shot",
                               "75% gradual")


FULL = Config()
QUICK = Config(teacher="teacher_quick", seeds=(0,), steps=4, batch_size=4, mask_frequency=1,
               kd_steps=2, eval_windows=16, patterns=("2:4", "75% gradual"))

SWEEP = ("seeds", "patterns")  # what --resume may differ in


def pruner(cfg: Config, pattern: str) -> optax.GradientTransformation | None:
  """The pruning transform of ``pattern`` over the block kernels (None for "dense")."""
  layers = [prune.Rule(pattern="^head/", prune=False), prune.Rule(pattern="^block")]
  if pattern == "dense":
    return None
  if pattern == "2:4":
    return prune.nm(2, 4, layers=layers, skip_first_last=False)
  sparsity = {"50% unstructured": 0.5, "75% one-shot": 0.75, "75% gradual": 0.75}[pattern]
  schedule = None
  if pattern.endswith("gradual"):
    schedule = prune.polynomial(0, max(1, round(cfg.gradual_fraction * cfg.steps)),
                                frequency=cfg.mask_frequency)
  return prune.magnitude(sparsity, schedule, layers=layers, skip_first_last=False)


def warmup_cosine(lr: float, steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), max(steps, 2))


def kernel_sparsity(masks) -> float:
  kept = [np.asarray(m) for m in jax.tree.leaves(masks)]
  return float(1.0 - sum(m.sum() for m in kept) / sum(m.size for m in kept))


def prune_run(cfg: Config, pattern: str, seed: int, model, params, train, test) -> dict:
  """Fine-tunes the teacher ``cfg.steps`` steps under ``pattern`` (one-shot patterns pruned
  before the first step; gradual from dense)."""
  prune_tx = pruner(cfg, pattern)
  one_shot = prune_tx is not None and not pattern.endswith("gradual")
  start_params = prune.prune_once(prune_tx, params)[0] if one_shot else params
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(warmup_cosine(cfg.lr, cfg.steps), b2=0.99, weight_decay=0.0),
                   *([prune_tx] if prune_tx is not None else []))
  opt_state, step = tx.init(start_params), make_train_step(model, tx)
  p, start = start_params, time.process_time()
  for _, tokens in zip(range(cfg.steps), batches(train, cfg.batch_size, seed)):
    p, opt_state, _ = step(p, opt_state, tokens)
  row = {"part": "prune", "pattern": pattern, "seed": seed, "steps": cfg.steps,
         "sparsity_of_pruned_kernels": 0.0, "one_shot_bpb": None}
  if prune_tx is not None:
    masks = prune.get_masks(opt_state)
    p = prune.apply_masks(p, masks)
    row["sparsity_of_pruned_kernels"] = kernel_sparsity(masks)
  if one_shot:
    row["one_shot_bpb"] = bits_per_byte(model, start_params, test)
  return {**row, "finetuned_bpb": bits_per_byte(model, p, test),
          "cpu_seconds": round(time.process_time() - start, 1)}


def kd_run(cfg: Config, kind: str, seed: int, teacher, t_params, train, test) -> dict:
  """A half-width student trained from scratch with ``kind`` ("CE only" or "logit KD")."""
  student = LM(**{**model_fields(teacher), "width": teacher.width // 2})
  params = student.init(jax.random.key(seed), jnp.zeros((1, train.shape[1] - 1), jnp.int32))
  params = params["params"]
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(warmup_cosine(cfg.kd_lr, cfg.kd_steps), b2=0.99, weight_decay=0.1,
                               mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))
  opt_state = tx.init(params)

  def loss_fn(p, tokens):
    logits = student.apply({"params": p}, tokens[:, :-1])
    labels = tokens[:, 1:]
    if kind == "CE only":
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    t_logits = teacher.apply({"params": t_params}, tokens[:, :-1])
    v = logits.shape[-1]
    return distill.hinton_loss(logits.reshape(-1, v), t_logits.reshape(-1, v),
                               labels.reshape(-1), temperature=cfg.kd_temperature,
                               alpha=cfg.kd_alpha)

  @jax.jit
  def step(p, s, tokens):
    loss, g = jax.value_and_grad(loss_fn)(p, tokens)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  start = time.process_time()
  for _, tokens in zip(range(cfg.kd_steps), batches(train, cfg.batch_size, 1000 + seed)):
    params, opt_state, _ = step(params, opt_state, tokens)
  return {"part": "kd", "student": f"width {student.width}", "loss": kind, "seed": seed,
          "params": param_count(params), "steps": cfg.kd_steps,
          "test_bpb": bits_per_byte(student, params, test),
          "cpu_seconds": round(time.process_time() - start, 1)}


def row_key(row: dict) -> tuple:
  return row["part"], row.get("pattern", row.get("loss")), row["seed"]


def run(cfg: Config, skip_kd: bool, on_row=None, done: dict | None = None) -> dict:
  """Every (pattern, seed) and (loss, seed) of ``cfg``, seed by seed; rows in ``done`` (keyed by
  ``row_key``) are reused; ``on_row`` gets the result so far after each row."""
  model, params, _ = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  train, test = corpus["train"], corpus["test"][:cfg.eval_windows]
  result = {"config": dataclasses.asdict(cfg), "eval_windows": int(len(test)),
            "teacher_bpb": bits_per_byte(model, params, test), "rows": []}
  done = dict(done or {})
  runs = [("prune", p) for p in cfg.patterns] + ([] if skip_kd else
                                                 [("kd", k) for k in ("CE only", "logit KD")])
  for seed in cfg.seeds:
    for part, name in runs:
      row = done.get((part, name, seed))
      if row is None:
        row = (prune_run(cfg, name, seed, model, params, train, test) if part == "prune"
               else kd_run(cfg, name, seed, model, params, train, test))
        print(row, flush=True)
      result["rows"].append(row)
      if on_row is not None:
        on_row({**result, "partial": True})
  return result


def same_cell(values: list[float]) -> str:
  """One value when every seed gave the same (deterministic one-shot pruning), else mean ± sd."""
  return f"{values[0]:.4f}" if values and len(set(values)) == 1 else _report.mean_sd_cell(values)


def gap(a: list[float], b: list[float]) -> str:
  """mean(a) - mean(b), and in units of the larger sd."""
  if not a or not b:
    return "-"
  d, z = _report.sd_gap(a, b)
  return f"{d:+.4f}" + (f" ({z:+.1f} sd)" if z != float("inf") else "")


def markdown(result: dict, command: str) -> str:
  cfg, rows = result["config"], result["rows"]
  seeds = sorted({r["seed"] for r in rows})
  prune_rows = [r for r in rows if r["part"] == "prune"]
  by_pattern = {p: [r for r in prune_rows if r["pattern"] == p] for p in cfg["patterns"]}
  dense = [r["finetuned_bpb"] for r in by_pattern.get("dense", [])]
  md = "# LM pruning and distillation (float test bits per byte)\n\n"
  md += (f"Teacher: {result['teacher_bpb']:.4f} bpb on the first {result['eval_windows']} test "
         f"windows. Mean ± sd over seeds {seeds}; one seed sets the batch order (and the "
         "student's initialization).\n\n")
  md += (f"## Pruning the block kernels: {cfg['steps']} fine-tune steps x {cfg['batch_size']} "
         "windows\n\n")
  md += _report.markdown_table(
      ["pattern", "sparsity", "one-shot, before fine-tuning (the same on every seed)",
       f"after {cfg['steps']} steps", "vs dense (same steps)"],
      [[p, f"{rs[0]['sparsity_of_pruned_kernels']:.3f}",
        same_cell([r["one_shot_bpb"] for r in rs if r["one_shot_bpb"] is not None]),
        _report.mean_sd_cell([r["finetuned_bpb"] for r in rs]),
        "-" if p == "dense" else gap([r["finetuned_bpb"] for r in rs], dense)]
       for p, rs in by_pattern.items() if rs])
  if by_pattern.get("75% gradual"):
    md += (f"\nGradual: cubic from 0 to 75% over the first {cfg['gradual_fraction']:.0%} of the "
           f"steps, masks every {cfg['mask_frequency']} steps.")
    if by_pattern.get("75% one-shot"):
      bpb = lambda p: [r["finetuned_bpb"] for r in by_pattern[p]]
      md += f" Gradual - one-shot at 75%: {gap(bpb('75% gradual'), bpb('75% one-shot'))}."
    md += "\n"
  kd = [r for r in rows if r["part"] == "kd"]
  if kd:
    by_loss = {k: [r["test_bpb"] for r in kd if r["loss"] == k] for k in ("CE only", "logit KD")}
    md += (f"\n## Distillation: {kd[0]['student']} student ({kd[0]['params']:,} params) from "
           f"scratch, {cfg['kd_steps']} steps x {cfg['batch_size']} windows\n\n")
    md += _report.markdown_table(
        ["loss", f"bpb after {cfg['kd_steps']} steps", "vs CE only"],
        [[k, _report.mean_sd_cell(v), "-" if k == "CE only" else gap(v, by_loss["CE only"])]
         for k, v in by_loss.items() if v])
    md += f"\nKD: T={cfg['kd_temperature']}, alpha={cfg['kd_alpha']}.\n"
  md += f"\n{result['machine']}, {result['total_seconds']:.0f} s. `{command}`\n"
  return md


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--seeds", type=int, nargs="+", default=None)
  parser.add_argument("--skip-kd", action="store_true")
  parser.add_argument("--resume", action="store_true",
                      help="reuse the rows of the existing (partial) JSON with the same setting")
  parser.add_argument("--from-json", action="store_true",
                      help="rewrite the Markdown from the existing JSON, no run")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  if args.seeds is not None:
    cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
  name = "lm_prune_quick" if args.quick else "lm_prune"
  command = "python -m experiments.lm_prune" + (" --quick" if args.quick else "")
  json_path = os.path.join(args.out_dir, f"{name}.json")
  if args.from_json:
    with open(json_path) as f:
      result = json.load(f)
    partial = " (partial: the rows run so far)" if result.get("partial") else ""
    return _report.finish(name, result, markdown(result, command + partial), args.out_dir)
  machine = f"{jax.devices()[0]} ({os.cpu_count()} cores)"
  start = time.time()

  def partial(part):  # results so far, in case the run is cut short
    part = {**part, "machine": machine, "total_seconds": time.time() - start}
    _report.write(name, part, markdown(part, command + " (partial)"), out_dir=args.out_dir)

  done = saved_rows(json_path, cfg, SWEEP, row_key) if args.resume else {}
  result = run(cfg, args.skip_kd, on_row=partial, done=done)
  result.update(machine=machine, total_seconds=time.time() - start)
  return _report.finish(name, result, markdown(result, command), args.out_dir)


if __name__ == "__main__":
  main()
