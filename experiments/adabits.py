"""AdaBits on digits: one joint model at {8, 4, 3, 2} bits vs separately trained models, and
the "train at 8, run at fewer bits" direct-adaptation baseline with and without BN recalibration.

Each seed trains its own float CNN (own stratified split and init). From it: the joint AdaBits
model (switchable SAT clip levels and BatchNorm, the losses of all bit-widths summed in one
step) and one model per bit-width trained alone with the same quantizers and steps; then the
separate 8-bit model run at each lower bit-width with its 8-bit BatchNorm and clip levels
copied ("direct"), and again after re-estimating the BatchNorm statistics on 2 epochs of
training images ("direct + BN recal."). Weights and activations share the bit-width; the first
layer keeps 8-bit weights and a float input, the last 8-bit weights and inputs.

  python -m experiments.adabits            # 3 seeds, results in experiments/results/adabits.*
  python -m experiments.adabits --quick    # 1 seed, {8, 2}, 1 QAT epoch (smoke test)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax.config import OptimConfig, get_config
from compressjax.data import batches, steps_per_epoch
from compressjax.mixed import adabits as ab
from compressjax.runs import setup
from compressjax.train import (TrainState, evaluate, make_eval_step, make_optimizer,
                               make_train_step)
from compressjax.train.adabits_step import make_joint_step
from experiments import _report

QAT_LR = 0.02
BATCH = 32


@dataclasses.dataclass(frozen=True)
class Float:
  """A trained float model with its data."""

  model: Any
  variables: dict
  data: Any
  example: jax.Array
  accuracy: float


def enable_compile_cache() -> None:
  """Persistent XLA cache in the temp dir: seeds after the first reuse the compiled steps
  (on 2 shared cores compilation, not training, dominates these runs)."""
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(tempfile.gettempdir(), "compressjax_experiments_xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def train_float(seed: int, epochs: int) -> Float:
  """The digits CNN of ``seed`` (split and init), trained ``epochs`` with the demo's recipe."""
  cfg = get_config("digits_cnn", [f"train.seed={seed}", f"data.split_seed={seed}",
                                  f"train.epochs={epochs}"])
  s = setup(cfg)
  state = run_epochs(s.state, make_train_step(s.model, s.optimizer), s.dataset.train,
                     epochs=epochs, batch_size=cfg.train.batch_size, seed=seed)
  acc = accuracy(s.model, state, s.dataset.test)
  example = jnp.asarray(s.dataset.train.take(np.arange(256))[0])
  return Float(s.model, state.variables, s.dataset, example, acc)


def run_epochs(state: TrainState, step, data, *, epochs: int, batch_size: int = BATCH,
               seed: int = 0, first_epoch: int = 0) -> TrainState:
  for epoch in range(first_epoch, first_epoch + epochs):
    for batch in batches(data, batch_size, seed=seed, epoch=epoch):
      state, _ = step(state, batch)
  return state


def accuracy(model, state: TrainState, data) -> float:
  return evaluate(make_eval_step(model), state, data, 256)["accuracy"]


def qat_optimizer(epochs: int, num_examples: int, bits_lr: float | None = None,
                  lr_scale: float = 1.0):
  """SGD (Nesterov, cosine from ``QAT_LR * lr_scale``) for everything; FracBits' lambdas get
  SGD with momentum at a constant ``bits_lr`` (Adam would move every lambda at the same speed
  whatever its cost, which on digits left every layer at the uniform bits)."""
  spe = steps_per_epoch(num_examples, BATCH)
  sgd = make_optimizer(OptimConfig(lr=QAT_LR * lr_scale), total_steps=max(epochs * spe, 1),
                       steps_per_epoch=spe)
  if bits_lr is None:
    return sgd
  labels = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: "bits" if str(path[-1].key).endswith("lambda") else "rest", params)
  return optax.multi_transform({"rest": sgd, "bits": optax.sgd(bits_lr, momentum=0.9)}, labels)


def new_state(variables: dict, optimizer, seed: int) -> TrainState:
  rest = dict(variables)
  params = rest.pop("params")
  return TrainState(jnp.zeros((), jnp.int32), params, rest, optimizer.init(params),
                    jax.random.PRNGKey(seed))


def run_seed(seed: int, bits_list: tuple[int, ...], float_epochs: int, epochs: int) -> list[dict]:
  t0 = time.time()
  f = train_float(seed, float_epochs)
  records = [{"seed": seed, "model": "float", "bits": 32, "accuracy": f.accuracy}]
  log = lambda r: (records.append({"seed": seed, **r}),
                   print(f"seed {seed} {r['model']:>22} @{r['bits']}: {100 * r['accuracy']:.2f}% "
                         f"({time.time() - t0:.0f}s)", flush=True))
  train, n = f.data.train, len(f.data.train)

  joint = ab.adabits(f.model, bits_list, f.example)
  # The summed loss has len(bits_list) times the gradient of one: the same SGD step on the
  # shared weights as a separate model needs lr / len(bits_list) (lr 0.02 diverged on seed 1).
  joint_opt = qat_optimizer(epochs, n, lr_scale=1 / len(bits_list))
  state = new_state(ab.init_from_float(joint, f.variables, f.example), joint_opt, seed)
  state = run_epochs(state, make_joint_step(joint, joint_opt), train, epochs=epochs, seed=seed)
  opt = qat_optimizer(epochs, n)
  for b in bits_list:
    log({"model": "joint", "bits": b, "accuracy": accuracy(ab.at_bits(joint, b), state, f.data.test)})

  separate = {}
  for b in bits_list:
    m = ab.adabits(f.model, (b,), f.example)
    s = new_state(ab.init_from_float(m, f.variables, f.example), opt, seed)
    separate[b] = run_epochs(s, make_joint_step(m, opt), train, epochs=epochs, seed=seed)
    log({"model": "separate", "bits": b, "accuracy": accuracy(m, separate[b], f.data.test)})

  top = bits_list[0]
  images = [b["image"] for e in range(2) for b in batches(train, BATCH, seed=seed, epoch=100 + e)]
  for b in bits_list[1:]:
    m = ab.at_bits(ab.adabits(f.model, (top, b), f.example), b)
    variables = ab.copy_switch(separate[top].variables, top, b)
    direct = new_state(variables, opt, seed)
    log({"model": f"direct {top}->b", "bits": b, "accuracy": accuracy(m, direct, f.data.test)})
    recal = new_state(ab.recalibrate_bn(m, variables, images), opt, seed)
    log({"model": f"direct {top}->b + BN recal.", "bits": b,
         "accuracy": accuracy(m, recal, f.data.test)})
  return records


def summarize(records: list[dict], bits_list, seeds, float_epochs, epochs, out_dir, name):
  acc = lambda m, b: [r["accuracy"] for r in records if r["model"] == m and r["bits"] == b]
  models = list(dict.fromkeys(r["model"] for r in records if r["model"] != "float"))
  cell = lambda m, b: _report.fmt_pct(acc(m, b)) if acc(m, b) else "-"
  rows = [[m] + [cell(m, b) for b in bits_list] for m in models]
  joint_gap = [np.mean(acc("joint", b)) - np.mean(acc("separate", b)) for b in bits_list]
  md = (f"# AdaBits on digits (CNN; {len(seeds)} seeds, mean ± sd, % test accuracy)\n\n"
        f"Float CNN: {_report.fmt_pct(acc('float', 32))} ({float_epochs} epochs). Every quantized "
        f"model: {epochs} epochs of SGD (Nesterov, cosine, lr {QAT_LR}, batch {BATCH}) from the "
        f"float model; the joint model takes one step on the sum of its {len(bits_list)} losses "
        f"with lr {QAT_LR}/{len(bits_list)} (the summed gradient is {len(bits_list)}x larger; at "
        f"lr {QAT_LR} it diverged on one seed). SAT weights (centered grid) and PACT "
        "activations, W = A bits, first layer 8-bit weights and float input, last layer 8-bit. "
        "'direct 8->b': the separate 8-bit model run at b bits with its 8-bit BatchNorm and clip "
        "levels; '+ BN recal.': after re-estimating BatchNorm statistics at b bits on 2 epochs of "
        "training images (no gradient steps).\n\n"
        + _report.markdown_table(["model"] + [f"W{b}A{b}" for b in bits_list], rows)
        + "\nJoint minus separate (points): "
        + ", ".join(f"{b} bits {100 * g:+.2f}" for b, g in zip(bits_list, joint_gap)) + "\n")
  data = {"records": records, "seeds": list(seeds), "bits": list(bits_list),
          "float_epochs": float_epochs, "qat_epochs": epochs, "batch_size": BATCH, "lr": QAT_LR}
  paths = _report.write(name, data, md, out_dir)
  plot(acc, models, bits_list, os.path.join(out_dir, f"{name}.png"))
  print(md)
  return paths


def plot(acc, models, bits_list, path):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for m in models:
    bits = [b for b in bits_list if acc(m, b)]
    stats = [_report.mean_sd(acc(m, b)) for b in bits]
    ax.errorbar(bits, [100 * mu for mu, _ in stats], yerr=[100 * sd for _, sd in stats],
                marker="o", capsize=3, label=m)
  ax.axhline(100 * _report.mean_sd(acc("float", 32))[0], color="k", ls="--", label="float")
  ax.set_xlabel("weight / activation bits")
  ax.set_ylabel("test accuracy (%)")
  ax.set_xticks(bits_list)
  ax.invert_xaxis()
  ax.legend(fontsize=8)
  _report.save_figure(fig, path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1 seed, bits (8, 2), 1 QAT epoch")
  parser.add_argument("--out", default=_report.RESULTS_DIR)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--float-epochs", type=int, default=15)
  parser.add_argument("--epochs", type=int, default=10)
  args = parser.parse_args()
  enable_compile_cache()
  if args.quick:
    seeds, bits_list, float_epochs, epochs, name = (0,), (8, 2), 2, 1, "adabits_quick"
  else:
    seeds, bits_list, float_epochs, epochs, name = (tuple(range(args.seeds)), (8, 4, 3, 2),
                                                    args.float_epochs, args.epochs, "adabits")
  records = [r for seed in seeds for r in run_seed(seed, bits_list, float_epochs, epochs)]
  summarize(records, bits_list, seeds, float_epochs, epochs, args.out, name)


if __name__ == "__main__":
  main()
