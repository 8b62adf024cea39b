"""Pruning and distillation of the cached LM teacher (short runs).

* Pruning (``compressjax.prune``): one-shot magnitude pruning of every block kernel (attention
  query/key/value/out, MLP fc1/fc2; the head and embeddings stay dense) to 50% unstructured
  (per layer) or 2:4 along each kernel's input axis, evaluated one-shot and after ``steps``
  AdamW fine-tuning steps with the masks held (the pruner in the optax chain).
* Distillation (``compressjax.distill``): a half-width student (width 64, same depth, heads and
  context) trained from scratch for ``kd_steps`` steps with cross-entropy only vs Hinton's
  logit KD from the teacher (``hinton_loss``: ``(1 - alpha) CE + alpha T^2 KL``).

Reported: float test bits per byte on the first ``eval_windows`` test windows (pruned weights
are zeros in float kernels; no sparse export), and the measured sparsity of the pruned kernels.

  python -m experiments.lm_prune            # results/lm_prune.{json,md}
  python -m experiments.lm_prune --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax import distill, prune
from compressjax.models.lm import LM
from experiments import _report
from experiments.lm_common import (batches, bits_per_byte, load_corpus, model_fields,
                                   param_count, require_teacher, token_nats)


@dataclasses.dataclass(frozen=True)
class Config:
  teacher: str = "teacher"
  steps: int = 100
  batch_size: int = 16
  lr: float = 5e-4
  kd_steps: int = 200
  kd_lr: float = 3e-3
  kd_temperature: float = 2.0
  kd_alpha: float = 0.5
  eval_windows: int = 1024
  patterns: tuple[str, ...] = ("50% unstructured", "2:4")


FULL = Config()
QUICK = Config(teacher="teacher_quick", steps=2, batch_size=4, kd_steps=2, eval_windows=16,
               patterns=("2:4",))

PATTERNS = {"50% unstructured": lambda layers: prune.magnitude(0.5, layers=layers,
                                                              skip_first_last=False),
            "2:4": lambda layers: prune.nm(2, 4, layers=layers, skip_first_last=False)}


def schedule(cfg: Config, lr: float, steps: int, warmup: int):
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(1, warmup), max(steps, 2))


def prune_runs(cfg: Config, model, params, corpus, test) -> list[dict]:
  layers = [prune.Rule(pattern="^head/", prune=False), prune.Rule(pattern="^block")]
  rows = []
  for name in cfg.patterns:
    make = PATTERNS[name]
    pruner = make(layers)
    pruned, masks = prune.prune_once(pruner, params)
    kept = [np.asarray(m) for m in jax.tree.leaves(masks)]
    sparsity = 1.0 - sum(m.sum() for m in kept) / sum(m.size for m in kept)
    one_shot = bits_per_byte(model, pruned, test)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule(cfg, cfg.lr, cfg.steps, cfg.steps // 10), b2=0.99,
                                 weight_decay=0.0), make(layers))
    opt_state = tx.init(pruned)

    @jax.jit
    def step(p, s, tokens, tx=tx):
      loss, g = jax.value_and_grad(lambda p: token_nats(model, p, tokens).mean())(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    p, start = pruned, time.process_time()
    for _, tokens in zip(range(cfg.steps), batches(corpus["train"], cfg.batch_size, 7)):
      p, opt_state, _ = step(p, opt_state, tokens)
    p = prune.apply_masks(p, prune.get_masks(opt_state))
    rows.append({"pattern": name, "sparsity_of_pruned_kernels": float(sparsity),
                 "one_shot_bpb": one_shot, "finetuned_bpb": bits_per_byte(model, p, test),
                 "steps": cfg.steps, "cpu_seconds": round(time.process_time() - start, 1)})
    print(rows[-1], flush=True)
  return rows


def kd_runs(cfg: Config, teacher, t_params, corpus, test) -> list[dict]:
  student = LM(**{**model_fields(teacher), "width": teacher.width // 2})
  example = jnp.zeros((1, corpus["train"].shape[1] - 1), jnp.int32)
  rows = []
  for kind in ("CE only", "logit KD"):
    params = student.init(jax.random.key(0), example)["params"]
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule(cfg, cfg.kd_lr, cfg.kd_steps, cfg.kd_steps // 10),
                                 b2=0.99, weight_decay=0.1,
                                 mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))
    opt_state = tx.init(params)

    @jax.jit
    def step(p, s, tokens, tx=tx, kind=kind):
      def loss_fn(p):
        logits = student.apply({"params": p}, tokens[:, :-1])
        labels = tokens[:, 1:]
        v = logits.shape[-1]
        if kind == "CE only":
          return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        t_logits = teacher.apply({"params": t_params}, tokens[:, :-1])
        return distill.hinton_loss(logits.reshape(-1, v), t_logits.reshape(-1, v),
                                   labels.reshape(-1), temperature=cfg.kd_temperature,
                                   alpha=cfg.kd_alpha)
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    start = time.process_time()
    for _, tokens in zip(range(cfg.kd_steps), batches(corpus["train"], cfg.batch_size, 11)):
      params, opt_state, _ = step(params, opt_state, tokens)
    rows.append({"student": f"width {student.width}", "loss": kind,
                 "params": param_count(params), "steps": cfg.kd_steps,
                 "test_bpb": bits_per_byte(student, params, test),
                 "cpu_seconds": round(time.process_time() - start, 1)})
    print(rows[-1], flush=True)
  return rows


def markdown(result: dict, command: str) -> str:
  md = "# LM pruning and distillation (float test bits per byte)\n\n"
  md += (f"Teacher: {result['teacher_bpb']:.4f} bpb on the first {result['eval_windows']} test "
         "windows.\n\n")
  md += _report.markdown_table(
      ["pattern (block kernels)", "sparsity", "one-shot bpb", f"after {result['config']['steps']} steps"],
      [[r["pattern"], f"{r['sparsity_of_pruned_kernels']:.3f}", f"{r['one_shot_bpb']:.4f}",
        f"{r['finetuned_bpb']:.4f}"] for r in result["prune"]])
  md += "\n" + _report.markdown_table(
      ["student", "params", "loss", f"bpb after {result['config']['kd_steps']} steps"],
      [[r["student"], f"{r['params']:,}", r["loss"], f"{r['test_bpb']:.4f}"] for r in result["kd"]])
  md += (f"\nOne seed each (no sd). KD: T={result['config']['kd_temperature']}, "
         f"alpha={result['config']['kd_alpha']}. {result['machine']}, "
         f"{result['total_seconds']:.0f} s. `{command}`\n")
  return md


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--skip-kd", action="store_true")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  start = time.time()
  model, params, _ = require_teacher(cfg.teacher)
  corpus, _ = load_corpus()
  test = corpus["test"][:cfg.eval_windows]
  result = {"config": dataclasses.asdict(cfg), "eval_windows": int(len(test)),
            "teacher_bpb": bits_per_byte(model, params, test),
            "prune": prune_runs(cfg, model, params, corpus, test),
            "kd": [] if args.skip_kd else kd_runs(cfg, model, params, corpus, test),
            "machine": f"{jax.devices()[0]} ({os.cpu_count()} cores)"}
  result["total_seconds"] = time.time() - start
  name = "lm_prune_quick" if args.quick else "lm_prune"
  md = markdown(result, "python -m experiments.lm_prune" + (" --quick" if args.quick else ""))
  return _report.finish(name, result, md, args.out_dir)


if __name__ == "__main__":
  main()
