"""QAT over float: train-step time and compile time (trace + lower + compile) per model.

Models: the digits CNN (batch 64), ResNet-20 (batch 128) and the ViT (batch 64). Float and
quantized steps are timed interleaved in one process (A, B, A, B, ...) so machine noise hits
both alike; compile time is measured on a freshly built step each repetition, also
interleaved. Steps are compiled as ``compressjax.train.loop`` runs them, with the input state
donated (the outputs take over its buffers: nothing is copied for state that a step leaves
unchanged, such as a quantizer's calibrated sign). Ratios of medians are reported with the load
average. Goals: step <= 1.10x and compile <= 1.3x float.

``--method fixed_step`` puts the floor of any fake quantizer on the LSQ recipe's operands:
rounding to a constant grid, with no learned state and no step gradient (what quantizing those
operands costs at all, whatever the method). ``--flatten`` runs both steps with
``optax.flatten`` (one update over one raveled vector instead of one per leaf: QAT adds a small
step-size leaf per quantized operand, and on CPU each leaf's update is a separate kernel). Each
``--label`` is one entry of the JSON.

  python benchmarks/qat_step.py [--reps 20] [--compile-reps 3] [--method lsq|fixed_step|...]
                                [--bits 4] [--flatten] [--models cnn vit ...] [--label NAME]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax.core import compress, discover
from compressjax.models import get_model
from compressjax.quant import ste
from compressjax.quant.base import Quantizer
from compressjax.quant.recipes import recipe_rules
from compressjax.train import create_train_state, make_train_step

MODELS = {"cnn": ((8, 8, 1), 64), "resnet20": ((32, 32, 3), 128), "vit": ((8, 8, 1), 64)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedStep(Quantizer):
  """Rounding to a constant grid (step 0.05): no state, no step gradient; straight-through."""

  def fake(self, x, params, stats):
    del params, stats
    q = 2 ** (self.bits - 1)
    return ste.fake_quant(x, jnp.float32(0.05), -q, q - 1)


def _rules(method: str, sites, bits: int):
  """The LSQ recipe's rules; ``fixed_step``: the same operands through :class:`FixedStep`."""
  if method != "fixed_step":
    return recipe_rules(method, sites, w_bits=bits, a_bits=bits)
  fixed = lambda t: None if t is None else FixedStep(bits=t.bits)
  return [dataclasses.replace(r, weight=fixed(r.weight), act=fixed(r.act), rhs=fixed(r.rhs))
          for r in recipe_rules("lsq", sites, w_bits=bits, a_bits=bits)]


def _optimizer(flatten: bool):
  sgd = optax.sgd(0.01, momentum=0.9)
  return optax.flatten(sgd) if flatten else sgd


def _train_step(model, optimizer):
  """The jitted train step as the training loop compiles it (input state donated)."""
  return jax.jit(make_train_step(model, optimizer), donate_argnums=0)


def _step_and_state(model, x, y, flatten: bool):
  optimizer = _optimizer(flatten)
  state = create_train_state(model, optimizer, x, jax.random.PRNGKey(0))
  return _train_step(model, optimizer), state, {"image": x, "label": y}


def _time(step, state, batch):
  t = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics["loss"])
  return state, time.perf_counter() - t


def _compile_seconds(model, state, batch, flatten: bool) -> float:
  """Trace + lower + compile of a freshly built train step (no cache shared with earlier ones)."""
  step = _train_step(model, _optimizer(flatten))
  t = time.perf_counter()
  step.lower(state, batch).compile()
  return time.perf_counter() - t


def float_and_qat(name: str, batch: int, method: str, bits: int):
  """``(float model, compressed model, images, labels)`` of one benchmark model (``batch`` 0:
  the model's own batch)."""
  rng = np.random.default_rng(0)
  shape, batch = MODELS[name][0], batch or MODELS[name][1]
  x = rng.standard_normal((batch, *shape)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  model = get_model(name, 10)
  sites = discover(model, x, train=False)
  return model, compress(model, _rules(method, sites, bits)), x, y


def bench(name: str, batch: int, reps: int, compile_reps: int, method: str, bits: int,
          flatten: bool) -> dict:
  model, qmodel, x, y = float_and_qat(name, batch, method, bits)
  batch = len(x)
  runs = {"float": _step_and_state(model, x, y, flatten),
          "qat": _step_and_state(qmodel, x, y, flatten)}
  times = {k: [] for k in runs}
  states = {k: r[1] for k, r in runs.items()}
  for k, (step, _, b) in runs.items():  # compile and warm up
    for _ in range(2):
      states[k], _ = _time(step, states[k], b)
  for _ in range(reps):
    for k, (step, _, b) in runs.items():
      states[k], dt = _time(step, states[k], b)
      times[k].append(dt)
  compiles = {k: [] for k in runs}
  models = {"float": model, "qat": qmodel}
  for _ in range(compile_reps):
    for k, (_, _, b) in runs.items():
      compiles[k].append(_compile_seconds(models[k], states[k], b, flatten))
  med = {k: float(np.median(v)) for k, v in times.items()}
  cmed = {k: float(np.median(v)) for k, v in compiles.items()}
  return {"model": name, "batch": batch, "method": method, "bits": bits,
          "optimizer": "flatten(sgd)" if flatten else "sgd",
          "float_ms": 1e3 * med["float"], "qat_ms": 1e3 * med["qat"],
          "ratio": med["qat"] / med["float"], "reps": reps,
          "float_compile_s": cmed["float"], "qat_compile_s": cmed["qat"],
          "compile_ratio": cmed["qat"] / cmed["float"], "compile_reps": compile_reps,
          "load_average": os.getloadavg()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=0, help="0: each model's own batch")
  parser.add_argument("--compile-reps", type=int, default=3)
  parser.add_argument("--method", default="lsq")
  parser.add_argument("--bits", type=int, default=4)
  parser.add_argument("--flatten", action="store_true",
                      help="optax.flatten around the optimizer, for float and QAT alike")
  parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
  parser.add_argument("--label", default="", help="this run's name in the JSON")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
  args = parser.parse_args()
  device = jax.devices()[0]
  rows = [bench(name, args.batch, args.reps, args.compile_reps, args.method, args.bits,
                args.flatten) for name in args.models]
  for r in rows:
    print(f"{r['model']:>9} batch {r['batch']}: float {r['float_ms']:.2f} ms, "
          f"{r['method']} W{r['bits']}A{r['bits']} {r['qat_ms']:.2f} ms, ratio {r['ratio']:.2f}x; "
          f"compile {r['float_compile_s']:.2f} s vs {r['qat_compile_s']:.2f} s, "
          f"ratio {r['compile_ratio']:.2f}x (load {r['load_average'][0]:.1f})")
  os.makedirs(args.out, exist_ok=True)
  kind = device.device_kind.replace(" ", "_")
  path = os.path.join(args.out, f"qat_step_{kind}.json")
  label = args.label or ("flatten" if args.flatten else "default")
  runs = []
  if os.path.exists(path):
    with open(path) as f:
      runs = [r for r in json.load(f).get("runs", []) if r["label"] != label]
  with open(path, "w") as f:
    json.dump({"device": device.device_kind, "platform": device.platform,
               "host": platform.processor() or platform.machine(), "jax": jax.__version__,
               "runs": runs + [{"label": label, "results": rows}]}, f, indent=2)
  print(f"saved {path}")


if __name__ == "__main__":
  main()
