"""Activation signs from calibration on a model the zoo does not have: LayerNorm before every
quantized layer.

The model (defined here, not in the zoo) reads the 8 rows of a digit as 8 tokens: a ``Dense``
token embedding, two pre-LN residual MLP blocks (``LayerNorm -> Dense -> GELU -> Dense``) and a
``LayerNorm -> Dense`` head on the mean token. Every quantized ``Dense`` after a LayerNorm reads
inputs that are about half negative. Each seed trains the float model, then fine-tunes W4A4 LSQ
QAT copies from it (every layer quantized, first and last too) with three activation settings:

- ``recipe``: ``recipe_rules("lsq", ...)`` as it is: the sign of every activation quantizer is
  decided from the init batch (signed where it has negatives);
- ``signed``: the same rules with every activation quantizer set ``signed=True`` by hand;
- ``unsigned``: the same rules with ``signed=False`` (the old default, which clips negatives).

Reported: served (exported) test accuracy, mean ± sd over seeds; goal: ``recipe`` within 1 point
of ``signed``.

  python -m experiments.layernorm_sign           # 3 seeds
  python -m experiments.layernorm_sign --quick   # 1 seed, short training
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax.core import discover
from compressjax.data import load_dataset
from compressjax.quant.recipes import recipe_rules
from compressjax.train import create_train_state, make_eval_step, make_train_step
from compressjax.train.evaluate import evaluate
from compressjax.train.state import state_from_variables
from experiments import _report

VARIANTS = ("recipe", "signed", "unsigned")
BITS = 4


class RowMixer(nn.Module):
  """Rows of the image as tokens; pre-LN residual MLP blocks; LayerNorm + Dense head."""

  width: int = 32
  hidden: int = 64
  depth: int = 2
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    tokens = x.reshape((x.shape[0], x.shape[1], -1))  # (batch, rows, cols * channels)
    h = nn.Dense(self.width, name="embed")(tokens)
    for i in range(self.depth):
      y = nn.LayerNorm(name=f"ln{i}")(h)
      y = nn.Dense(self.width, name=f"up{i}")(nn.gelu(nn.Dense(self.hidden, name=f"in{i}")(y)))
      h = h + y
    return nn.Dense(self.num_classes, name="head")(nn.LayerNorm(name="ln_out")(h).mean(axis=1))


def _set_sign(rules, signed: bool):
  def act(q):
    return dataclasses.replace(q, signed=signed) if hasattr(q, "signed") else q
  return [dataclasses.replace(r, act=act(r.act)) if r.act is not None else r for r in rules]


def _batches(split, batch_size: int, seed: int):
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(split))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      x, y = split.take(order[i:i + batch_size])
      yield {"image": x, "label": y}


def _fit(model, state, data, steps: int, optimizer, seed: int):
  step = make_train_step(model, optimizer)
  batches = _batches(data.train, 64, seed)
  for _ in range(steps):
    state, _ = step(state, next(batches))
  return state


def _accuracy(model, variables, data) -> float:
  state = state_from_variables(variables, optax.identity(), jax.random.key(0))
  return float(evaluate(make_eval_step(model), state, data.test, 128)["accuracy"])


def _negative_fraction(model, variables, x) -> float:
  """Fraction of negative inputs over the Dense sites after a LayerNorm (``in*``, ``head``)."""
  feats = cj.distill.taps(model, variables, x, [f"ln{i}" for i in range(model.depth)] + ["ln_out"])
  return float(np.mean([np.mean(np.asarray(f) < 0) for f in feats.values()]))


def run(seeds, float_steps: int, qat_steps: int) -> list[dict]:
  records = []
  for seed in seeds:
    data = load_dataset("digits", split_seed=seed)
    model = RowMixer()
    x0 = data.train.take(np.arange(256))[0]
    state = create_train_state(model, optax.adam(3e-3), x0[:1], jax.random.key(seed))
    state = _fit(model, state, data, float_steps, optax.adam(3e-3), seed)
    float_vars = {"params": state.params, **state.model_state}
    records.append({"seed": seed, "variant": "float", "test_examples": len(data.test),
                    "accuracy": _accuracy(model, float_vars, data),
                    "negative_fraction": _negative_fraction(model, float_vars, x0)})
    rules = recipe_rules("lsq", discover(model, x0[:1], train=False), w_bits=BITS, a_bits=BITS,
                         edge_bits=None)
    for variant in VARIANTS:
      t = time.perf_counter()
      chosen = rules if variant == "recipe" else _set_sign(rules, variant == "signed")
      qmodel = cj.compress(model, chosen)
      variables = cj.init_from(qmodel, float_vars, x0, train=False)
      init_acc = _accuracy(qmodel, variables, data)
      optimizer = optax.adam(1e-3)
      qstate = state_from_variables(variables, optimizer, jax.random.key(seed))
      qstate = _fit(qmodel, qstate, data, qat_steps, optimizer, seed + 1)
      trained = {"params": qstate.params, **qstate.model_state}
      serving_model, serving_vars = cj.export(qmodel, trained, x0[:1], train=False)
      records.append({"seed": seed, "variant": variant, "init_accuracy": init_acc,
                      "accuracy": _accuracy(serving_model, serving_vars, data),
                      "seconds": time.perf_counter() - t})
      print(records[-1], flush=True)
  return records


def report(records, args) -> str:
  by = lambda v, key="accuracy": [r[key] for r in records if r["variant"] == v]
  rows = [["float", _report.fmt_pct(by("float")), ""]]
  rows += [[v, _report.fmt_pct(by(v)), _report.fmt_pct(by(v, "init_accuracy"))] for v in VARIANTS]
  floats = [r for r in records if r["variant"] == "float"]
  neg = np.mean([r["negative_fraction"] for r in floats])
  n_test = floats[0]["test_examples"]
  gap = 100 * (np.mean(by("signed")) - np.mean(by("recipe")))
  return (
      f"# Activation signs from calibration: LayerNorm before every quantized layer\n\n"
      f"`python -m experiments.layernorm_sign{' --quick' if args.quick else ''}`: RowMixer (defined "
      f"in the script, not in the zoo) on digits, W{BITS}A{BITS} LSQ with every layer quantized, "
      f"{len(args.seeds)} seed(s), float {args.float_steps} steps, QAT {args.qat_steps} steps "
      f"(batch 64, adam), served test accuracy on {n_test} test images (one image = {100 / n_test:.2f} points).\n\n"
      + _report.markdown_table(["activations", "served accuracy", "right after init"], rows)
      + f"\n{100 * neg:.1f}% of the LayerNorm outputs that the quantized layers read are negative "
      f"(float model, init batch). `signed` - `recipe` = {gap:+.2f} points (goal: |difference| <= 1).\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  args.seeds = (0,) if args.quick else (0, 1, 2)
  args.float_steps, args.qat_steps = (100, 20) if args.quick else (1500, 450)
  records = run(args.seeds, args.float_steps, args.qat_steps)
  name = "layernorm_sign_quick" if args.quick else "layernorm_sign"
  paths = _report.write(name, {"records": records, "seeds": list(args.seeds),
                               "float_steps": args.float_steps, "qat_steps": args.qat_steps},
                        report(records, args))
  print(open(paths["md"]).read())


if __name__ == "__main__":
  main()
