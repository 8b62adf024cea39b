"""Knowledge distillation on digits: a narrow CNN student with and without a wide teacher.

Per seed (its own stratified 80/20 split and inits):
- a wide CNN teacher is trained with cross-entropy;
- a narrow CNN student is trained (same steps, same batches) with
  CE only (alpha = 0) or with Hinton KD, ``(1 - a) CE + a T^2 KL`` (T = 4, a = 0.9);
- in two regimes: all labels, and 10% labels (a stratified labelled subset). With few labels
  the CE-only student trains on the labelled subset alone (unlabelled images carry no signal
  for it); the KD student sees every image, the unlabelled ones with label -1, so its CE term
  uses the labelled ones and its KD term all of them.
Every student takes the same number of steps and goes through the same ``make_distill_step``;
only the objective (alpha = 0 or 0.9) and, with few labels, the CE-only data differ.

  python -m experiments.distill_kd            # 5 seeds: results/kd.{json,md,png}
  python -m experiments.distill_kd --quick    # 1 seed, 2 epochs (CI-sized): results/kd_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from compressjax import cost
from compressjax.data import ArraySplit, batches, load_dataset, steps_per_epoch
from compressjax.distill.objective import hinton_objective
from compressjax.models import CNN
from compressjax.train import (TrainState, create_train_state, evaluate, make_eval_step,
                               make_train_step, param_count)
from compressjax.train.distill_step import make_distill_step
from experiments import _report


@dataclasses.dataclass(frozen=True)
class Config:
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  teacher: CNN = CNN(widths=(32, 64), hidden=128)
  student: CNN = CNN(widths=(4, 8), hidden=16)
  label_fractions: tuple[float, ...] = (1.0, 0.1)
  teacher_epochs: int = 15
  student_epochs: int = 30
  batch_size: int = 32
  lr: float = 0.05
  weight_decay: float = 5e-4
  temperature: float = 4.0
  alpha: float = 0.9


FULL = Config()
QUICK = Config(seeds=(0,), teacher_epochs=2, student_epochs=2)


def optimizer(cfg: Config, steps: int) -> optax.GradientTransformation:
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(optax.cosine_decay_schedule(cfg.lr, steps), 0.9))


def few_labels(train: ArraySplit, fraction: float, seed: int) -> ArraySplit:
  """The split with all but a stratified ``fraction`` of labels replaced by -1."""
  if fraction >= 1.0:
    return train
  rng = np.random.default_rng([seed, 7])
  y = np.full_like(train.y, -1)
  for c in np.unique(train.y):
    idx = np.flatnonzero(train.y == c)
    keep = rng.choice(idx, max(1, round(fraction * idx.size)), replace=False)
    y[keep] = c
  return ArraySplit(train.x, y)


def labelled_only(split: ArraySplit) -> ArraySplit:
  keep = split.y >= 0
  return ArraySplit(split.x[keep], split.y[keep])


def train(step, state: TrainState, split: ArraySplit, cfg: Config, steps: int,
          seed: int) -> TrainState:
  """``steps`` steps over shuffled epochs of ``split``."""
  epoch, n = 0, 0
  while n < steps:
    for batch in batches(split, cfg.batch_size, seed=seed, epoch=epoch):
      state, _ = step(state, batch)
      n += 1
      if n == steps:
        break
    epoch += 1
  return state


def run_seed(cfg: Config, seed: int) -> dict[str, Any]:
  data = load_dataset("digits", split_seed=seed)
  spe = steps_per_epoch(len(data.train), cfg.batch_size)
  example = jnp.zeros((1, *data.input_shape), jnp.float32)
  acc = lambda model, state: evaluate(make_eval_step(model), state, data.test, 512)["accuracy"]

  t0 = time.time()
  tx = optimizer(cfg, cfg.teacher_epochs * spe)
  teacher = train(make_train_step(cfg.teacher, tx),
                  create_train_state(cfg.teacher, tx, example, jax.random.PRNGKey(seed)),
                  data.train, cfg, cfg.teacher_epochs * spe, seed)
  out = {"teacher": {"accuracy": acc(cfg.teacher, teacher), "time_s": time.time() - t0},
         "test_images": len(data.test.y)}
  steps = cfg.student_epochs * spe
  tx = optimizer(cfg, steps)
  for frac in cfg.label_fractions:
    split = few_labels(data.train, frac, seed)
    for method, alpha in (("ce", 0.0), ("kd", cfg.alpha)):
      data_used = labelled_only(split) if method == "ce" else split
      t0 = time.time()
      step = make_distill_step(cfg.student, tx, cfg.teacher, teacher.variables,
                               hinton_objective(cfg.temperature, alpha))
      init = create_train_state(cfg.student, tx, example, jax.random.PRNGKey(seed + 1000))
      state = train(step, init, data_used, cfg, steps, seed)
      out[f"{method}@{frac:g}"] = {"accuracy": acc(cfg.student, state),
                                   "labelled": int(np.sum(split.y >= 0)),
                                   "train_images": len(data_used), "steps": steps,
                                   "time_s": time.time() - t0}
      print(f"seed {seed} {method}@{frac:g}: {out[f'{method}@{frac:g}']['accuracy']:.4f}",
            flush=True)
  return out


def summarize(cfg: Config, runs: dict[int, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
  example = jnp.zeros((1, 8, 8, 1))
  size = {}
  for name, m in (("teacher", cfg.teacher), ("student", cfg.student)):
    shapes = jax.eval_shape(m.init, jax.random.key(0), example)
    size[name] = {"params": param_count(shapes["params"]), "macs": cost.profile(m, example).macs}
  rows, summary = [], {}
  keys = ["teacher"] + [f"{m}@{f:g}" for f in cfg.label_fractions for m in ("ce", "kd")]
  for key in keys:
    accs = [r[key]["accuracy"] for r in runs.values()]
    model = "teacher" if key == "teacher" else "student"
    labels = "100%" if key == "teacher" else f"{100 * float(key.split('@')[1]):g}%"
    method = {"teacher": "CE (teacher)", "ce": "CE only", "kd": "KD T=4 a=0.9"}[key.split("@")[0]]
    summary[key] = {"accuracy_mean_sd": _report.mean_sd(accs), "accuracies": accs, **size[model]}
    rows.append([model, labels, method, f"{size[model]['params']:,}",
                 f"{size[model]['macs']:,.0f}", _report.fmt_pct(accs)])
  md = ("# Knowledge distillation on digits\n\n"
        f"Teacher CNN widths {cfg.teacher.widths} hidden {cfg.teacher.hidden}; student CNN widths "
        f"{cfg.student.widths} hidden {cfg.student.hidden}. Every student trains for "
        f"{cfg.student_epochs} epochs' worth of full-data steps, the teacher {cfg.teacher_epochs} "
        f"epochs; SGD lr {cfg.lr} cosine, batch {cfg.batch_size}; seeds {list(runs)} (each its own "
        f"split, {next(iter(runs.values())).get('test_images', '?')} test images). With 10% "
        "labels the CE-only student trains on the labelled images alone, the KD student on all "
        "(KD term on all, CE on the labelled). Test accuracy mean ± sd over seeds; MACs per "
        "example.\n\n"
        + _report.markdown_table(
            ["model", "labels", "method", "params", "MACs", "test accuracy (%)"], rows))
  gaps = []
  for f in cfg.label_fractions:
    (kd, kd_sd), (ce, ce_sd) = (summary[f"{m}@{f:g}"]["accuracy_mean_sd"] for m in ("kd", "ce"))
    gaps.append(f"{100 * f:g}% labels {100 * (kd - ce):+.2f} points "
                f"({(kd - ce) / max(kd_sd, ce_sd, 1e-12):.1f} x the larger sd)")
  md += f"\nKD - CE only (means over seeds): {', '.join(gaps)}.\n"
  return md, summary


def plot(cfg: Config, summary: dict[str, Any], path: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.2))
  xs = np.arange(len(cfg.label_fractions))
  for i, (method, label) in enumerate((("ce", "student, CE only"), ("kd", "student, KD"))):
    m = [100 * summary[f"{method}@{f:g}"]["accuracy_mean_sd"][0] for f in cfg.label_fractions]
    s = [100 * summary[f"{method}@{f:g}"]["accuracy_mean_sd"][1] for f in cfg.label_fractions]
    ax.bar(xs + (i - 0.5) * 0.35, m, 0.35, yerr=s, label=label, capsize=3)
  ax.axhline(100 * summary["teacher"]["accuracy_mean_sd"][0], color="k", ls="--", label="teacher")
  ax.set_xticks(xs, [f"{100 * f:g}% labels" for f in cfg.label_fractions])
  ax.set_ylabel("test accuracy (%)")
  lo = min(100 * summary[k]["accuracy_mean_sd"][0] for k in summary) - 5
  ax.set_ylim(max(lo, 0), 100)
  ax.legend(loc="lower left", fontsize=8)
  _report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="CI-sized run (1 seed, 2 epochs)")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  name = "kd_quick" if args.quick else "kd"
  t0 = time.time()
  runs = {seed: run_seed(cfg, seed) for seed in cfg.seeds}
  md, summary = summarize(cfg, runs)
  md += f"\nTotal time {time.time() - t0:.0f} s (`python -m experiments.distill_kd"
  md += " --quick`).\n" if args.quick else "`).\n"
  data = {"config": {k: str(v) for k, v in dataclasses.asdict(cfg).items()}, "runs": runs,
          "summary": summary}
  paths = _report.write(name, data, md)
  plot(cfg, summary, paths["md"][:-3] + ".png")
  print(md)


if __name__ == "__main__":
  main()
