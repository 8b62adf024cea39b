"""Pruning on digits: gradual vs one-shot magnitude, 2:4, Network Slimming (CNN and ResNet-20).

Per seed (its own stratified split and init) and model:
- a dense model is trained (SGD + momentum, cosine);
- magnitude pruning at each sparsity, one-shot (all at the first fine-tuning step; accuracy
  also before fine-tuning) vs gradual (Zhu & Gupta cubic schedule over the first half of
  fine-tuning, masks every 10 steps), both fine-tuned for the same number of steps;
- 2:4 sparsity without and with fine-tuning;
- Network Slimming: a second model trained with the L1 penalty on BN scales, pruned at each
  channel fraction (one global |gamma| percentile), shrunk to a thinner model, fine-tuned.
Params count nonzero parameters; MACs are per example (``compressjax.cost``), for masked
models scaled by each layer's density (what a sparse kernel could skip), for slimmed models
those of the genuinely thinner network.

  python -m experiments.pruning            # 3 seeds, CNN and ResNet-20: results/pruning.*

The ResNet-20 is half width (stages 8/16/32) and epochs are few (12 + 6) to fit ~15 minutes on
2 busy CPU cores; the first and last layer stay dense (found with ``prune.call_order``).
  python -m experiments.pruning --quick    # 1 seed, CNN, 1 epoch (CI-sized): pruning_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from compressjax import cost, prune
from compressjax.data import batches, load_dataset, steps_per_epoch
from compressjax.models import CNN, ResNet
from compressjax.train import TrainState, evaluate, make_eval_step, make_train_step
from experiments import _report


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A model to prune; ``slim_s`` is its Network Slimming penalty."""

  name: str
  model: nn.Module
  slim_s: float


@dataclasses.dataclass(frozen=True)
class Config:
  models: tuple[ModelSpec, ...]
  seeds: tuple[int, ...] = (0, 1, 2)
  sparsities: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
  slim_fractions: tuple[float, ...] = (0.5, 0.7)
  train_epochs: int = 12
  finetune_epochs: int = 6
  batch_size: int = 64
  lr: float = 0.05
  finetune_lr: float = 0.01
  weight_decay: float = 5e-4
  mask_frequency: int = 10


# The paper's s (1e-4 VGG, 1e-5 ResNet) assumes ~60k SGD steps; our runs take a few hundred,
# so s is scaled up to give a comparable total L1 shrinkage lr * s * steps (ratio kept 10:1).
FULL = Config(models=(
    ModelSpec("cnn", CNN(widths=(32, 64), hidden=128), 2e-2),
    ModelSpec("resnet20_half", ResNet(stage_widths=(8, 16, 32), stem_width=8), 2e-3),
))
QUICK = Config(models=(ModelSpec("cnn", CNN(widths=(8, 16), hidden=32), 2e-2),), seeds=(0,),
               sparsities=(0.9,), slim_fractions=(0.5,), train_epochs=1, finetune_epochs=1)


class Runner:
  """Trains and evaluates on one dataset split; caches jitted steps per (model, optimizer)."""

  def __init__(self, cfg: Config, seed: int):
    self.cfg, self.seed = cfg, seed
    self.data = load_dataset("digits", split_seed=seed)
    self.spe = steps_per_epoch(len(self.data.train), cfg.batch_size)
    self.example = jnp.zeros((1, *self.data.input_shape), jnp.float32)
    self._steps: dict[Any, Callable] = {}

  def optimizer(self, lr: float, epochs: int, *head: optax.GradientTransformation,
                tail: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
    """SGD + momentum with cosine lr and weight decay; ``head`` before it, ``tail`` (a pruner)
    after it."""
    sched = optax.cosine_decay_schedule(lr, epochs * self.spe)
    parts = [*head, optax.add_decayed_weights(self.cfg.weight_decay), optax.sgd(sched, 0.9)]
    return optax.chain(*parts, *([tail] if tail else []))

  def fit(self, key: Any, model: nn.Module, variables: Any, tx: optax.GradientTransformation,
          epochs: int) -> tuple[Any, Any]:
    """Trains ``epochs``; returns (variables, optimizer state). ``key`` names the jitted step."""
    if key not in self._steps:
      self._steps[key] = make_train_step(model, tx)
    params = variables["params"]
    state = TrainState(jnp.zeros((), jnp.int32), params,
                       {k: v for k, v in variables.items() if k != "params"}, tx.init(params),
                       jax.random.PRNGKey(self.seed))
    for epoch in range(epochs):
      for batch in batches(self.data.train, self.cfg.batch_size, seed=self.seed, epoch=epoch):
        state, _ = self._steps[key](state, batch)
    return state.variables, state.opt_state

  def accuracy(self, model: nn.Module, variables: Any) -> float:
    state = TrainState(jnp.zeros((), jnp.int32), variables["params"],
                       {k: v for k, v in variables.items() if k != "params"}, None, None)
    return evaluate(make_eval_step(model), state, self.data.test, 512)["accuracy"]


def nonzero_params(params: Any) -> int:
  return int(sum(np.count_nonzero(np.asarray(p)) for p in jax.tree.leaves(params)))


def masked_macs(model: nn.Module, example: jax.Array, params: Any) -> float:
  """MACs per example with each site's MACs scaled by its weight parameter's density."""
  prof = cost.profile(model, example)
  density = {p: np.count_nonzero(np.asarray(x)) / x.size
             for p, x in prune.selection.leaf_paths(params) if np.ndim(x) >= 2}
  return float(sum(s.macs * density.get(s.param, 1.0) for s in prof.sites))


def measure(run: Runner, model: nn.Module, variables: Any, acc: float,
            acc_before: float | None = None) -> dict[str, Any]:
  return {"accuracy": acc, "accuracy_before_finetune": acc_before,
          "params": nonzero_params(variables["params"]),
          "macs": masked_macs(model, run.example, variables["params"])}


def run_model(run: Runner, spec: ModelSpec) -> dict[str, Any]:
  """All methods for one model and seed; returns {method: measurements}."""
  cfg, model = run.cfg, spec.model
  out: dict[str, Any] = {}
  init = model.init(jax.random.PRNGKey(run.seed), run.example)
  order = prune.call_order(model, init, run.example)
  dense, _ = run.fit((spec.name, "dense"), model, init,
                     run.optimizer(cfg.lr, cfg.train_epochs), cfg.train_epochs)
  out["dense"] = measure(run, model, dense, run.accuracy(model, dense))

  def finetune(label: str, pruner: optax.GradientTransformation) -> dict[str, Any]:
    tx = run.optimizer(cfg.finetune_lr, cfg.finetune_epochs, tail=pruner)
    v, opt_state = run.fit((spec.name, label), model, dense, tx, cfg.finetune_epochs)
    v = {**v, "params": prune.apply_masks(v["params"], prune.get_masks(opt_state))}
    return measure(run, model, v, run.accuracy(model, v))

  ft_steps = cfg.finetune_epochs * run.spe
  for s in cfg.sparsities:
    one_shot = prune.magnitude(s, order=order)
    pruned, _ = prune.prune_once(one_shot, dense["params"])
    before = run.accuracy(model, {**dense, "params": pruned})
    out[f"one_shot@{s}"] = {**finetune(f"one_shot@{s}", one_shot),
                            "accuracy_before_finetune": before}
    sched = prune.polynomial(0, max(1, ft_steps // 2), frequency=cfg.mask_frequency)
    out[f"gradual@{s}"] = finetune(f"gradual@{s}", prune.magnitude(s, sched, order=order))

  nm = prune.nm(2, 4, order=order)
  pruned, _ = prune.prune_once(nm, dense["params"])
  v = {**dense, "params": pruned}
  out["2:4"] = measure(run, model, v, run.accuracy(model, v))
  out["2:4+finetune"] = {**finetune("2:4", nm), "accuracy_before_finetune": out["2:4"]["accuracy"]}

  penalty = prune.slimming_penalty(spec.slim_s, prune.slimming_rules(model))
  slim, _ = run.fit((spec.name, "slim"), model, init,
                    run.optimizer(cfg.lr, cfg.train_epochs, penalty), cfg.train_epochs)
  out["slim_trained"] = measure(run, model, slim, run.accuracy(model, slim))
  for f in cfg.slim_fractions:
    keep = prune.slimming_keep(model, slim, f)
    thin, thin_vars = prune.shrink(model, slim, keep)
    before = run.accuracy(thin, thin_vars)
    tuned, _ = run.fit(None, thin, thin_vars, run.optimizer(cfg.finetune_lr, cfg.finetune_epochs),
                       cfg.finetune_epochs)
    run._steps.pop(None)  # widths differ per seed: never reuse a thin model's step
    out[f"slim@{f}"] = {**measure(run, thin, tuned, run.accuracy(thin, tuned), before),
                        "widths": {g.name: g.size for g in prune.channel_groups(thin)}}
  return out


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[str, list[dict]]:
  """Markdown table and rows: mean +- sd over seeds of every measurement."""
  rows, table = [], []
  for model, methods in results.items():
    for method, runs in methods.items():
      row = {"model": model, "method": method, "seeds": len(runs)}
      for k in ("accuracy", "accuracy_before_finetune", "params", "macs"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        row[k] = _report.mean_sd(vals) if vals else None
      rows.append(row)

      def pct(v):
        return "" if v is None else f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"

      table.append([model, method, pct(row["accuracy_before_finetune"]), pct(row["accuracy"]),
                    f"{row['params'][0]:,.0f}", f"{row['macs'][0] / 1e3:,.1f}k"])
  md = _report.markdown_table(
      ["model", "method", "acc. before FT (%)", "acc. (%)", "nonzero params", "MACs/example"],
      table)
  return md, rows


def plot(rows: list[dict], cfg: Config, path: str) -> None:
  models = sorted({r["model"] for r in rows})
  fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
  for ax, model in zip(axes[0], models):
    by = {r["method"]: r for r in rows if r["model"] == model}
    dense = by["dense"]["accuracy"][0]
    for kind, marker in (("gradual", "o"), ("one_shot", "s")):
      acc = [by[f"{kind}@{s}"]["accuracy"] for s in cfg.sparsities]
      ax.errorbar([100 * s for s in cfg.sparsities], [100 * a[0] for a in acc],
                  yerr=[100 * a[1] for a in acc], marker=marker, capsize=3, label=f"{kind} + FT")
    before = [by[f"one_shot@{s}"]["accuracy_before_finetune"] for s in cfg.sparsities]
    ax.errorbar([100 * s for s in cfg.sparsities], [100 * a[0] for a in before],
                yerr=[100 * a[1] for a in before], marker="x", ls=":", capsize=3,
                label="one-shot, no FT")
    for method, marker in (("2:4", "v"), ("2:4+finetune", "^")):
      ax.errorbar([50], [100 * by[method]["accuracy"][0]], yerr=[100 * by[method]["accuracy"][1]],
                  marker=marker, ls="", capsize=3, label=method)
    for f in cfg.slim_fractions:
      a = by[f"slim@{f}"]["accuracy"]
      ax.errorbar([100 * f], [100 * a[0]], yerr=[100 * a[1]], marker="*", ms=10, ls="",
                  capsize=3, label=f"slimming {int(100 * f)}% channels + FT")
    ax.axhline(100 * dense, color="k", ls="--", label="dense")
    ax.set_title(model)
    ax.set_xlabel("sparsity of pruned layers / channels removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
  _report.save_figure(fig, path)


def run(cfg: Config, name: str, out_dir: str) -> None:
  t0 = time.time()
  results: dict[str, dict[str, list]] = {m.name: {} for m in cfg.models}
  for seed in cfg.seeds:
    runner = Runner(cfg, seed)
    for spec in cfg.models:
      t = time.time()
      for method, r in run_model(runner, spec).items():
        results[spec.name].setdefault(method, []).append({"seed": seed, **r})
      print(f"seed {seed} {spec.name}: {time.time() - t:.0f}s", flush=True)
  md, rows = summarize(results)
  header = (f"# Pruning on digits ({len(cfg.seeds)} seeds, mean ± sd; {cfg.train_epochs} "
            f"training epochs, {cfg.finetune_epochs} fine-tuning epochs; "
            f"{time.time() - t0:.0f} s)\n\n")
  data = {"config": dataclasses.asdict(cfg) | {"models": [m.name for m in cfg.models]},
          "summary": rows, "runs": results}
  paths = _report.write(name, data, header + md, out_dir)
  plot(rows, cfg, os.path.join(out_dir, f"{name}.png"))
  print(header + md)
  print(paths)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 seed, small CNN, 1 epoch")
  parser.add_argument("--out", default=_report.RESULTS_DIR)
  args = parser.parse_args(argv)
  if args.quick:
    run(QUICK, "pruning_quick", args.out)
  else:
    run(FULL, "pruning", args.out)


if __name__ == "__main__":
  main()
