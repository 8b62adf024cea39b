"""Served (exported) vs float inference latency on CPU: zoo CNN, ResNet-20 and ViT, batch 1 / 128.

Served models: ``cj.export`` of the model compressed with LSQ at
* W8A8: 8-bit per-channel weights and 8-bit inputs at every weight site (first and last too),
  so the sites run on int8 x int8 -> int32 dots / convs;
* W4A16: 4-bit per-channel weights, float inputs, so dense sites run through the kernel
  dispatcher (``compressjax.kernels.matmul``) and convs on the xla dequant path.
Each served site's path comes from ``compressjax.export.serving_paths``. Per model and batch,
the jitted float and served forwards are timed interleaved in one process (float, W8A8, W4A16,
float, ...) so machine load hits all alike; medians and the ratios of medians are reported
with the load average.

Where XLA:CPU's int8 op is slower than f32, the per-op micro-benchmark says by how much: one
int8 x int8 -> int32 ``dot_general`` and one int8 ``conv_general_dilated`` vs the f32 op at the
same shapes (the largest dense and conv site of ResNet-20 / the ViT at batch 128), interleaved.

  python benchmarks/serve_latency.py [--quick] [--reps 20]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compressjax as cj  # pylint: disable=g-import-not-at-top
from benchmarks import _results
from compressjax.core import Rule, discover
from compressjax.export import serving_paths
from compressjax.models import get_model
from compressjax.quant.granularity import PER_CHANNEL
from compressjax.quant.lsq import LSQ
from compressjax.quant.recipes import recipe_rules

MODELS = {"cnn": (8, 8, 1), "resnet20": (32, 32, 3), "vit": (8, 8, 1)}


def served_models(name: str, x) -> dict:
  """{"float": (apply, variables), "w8a8": ..., "w4a16": ...} plus each served model's paths."""
  model = get_model(name, 10)
  float_vars = model.init(jax.random.key(0), x, train=False)
  rules = {
      "w8a8": recipe_rules("lsq", discover(model, x, train=False), w_bits=8, a_bits=8,
                           edge_bits=None),
      "w4a16": [Rule(pattern=".", weight=LSQ(bits=4, granularity=PER_CHANNEL))],
  }
  runs = {"float": (model, float_vars)}
  paths = {}
  for kind, rule_list in rules.items():
    qmodel = cj.compress(model, rule_list)
    variables = cj.init_from(qmodel, float_vars, x, train=False)
    runs[kind] = cj.export(qmodel, variables, x, train=False)
    paths[kind] = {site: path for site, (path, _) in
                   serving_paths(*runs[kind], x, train=False).items()}
  return runs, paths


def interleaved(fns: dict, reps: int) -> dict:
  """Median seconds of each zero-argument function, timed round-robin after two warm-up calls."""
  for fn in fns.values():
    for _ in range(2):
      jax.block_until_ready(fn())
  times = collections.defaultdict(list)
  for _ in range(reps):
    for key, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[key].append(time.perf_counter() - start)
  return {k: float(np.median(v)) for k, v in times.items()}


def bench_model(name: str, batch: int, reps: int) -> dict:
  x = np.random.default_rng(0).standard_normal((batch, *MODELS[name])).astype(np.float32)
  runs, paths = served_models(name, x)
  fns = {}
  for kind, (model, variables) in runs.items():
    apply = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
    fns[kind] = lambda apply=apply, v=variables: apply(v, x)
  med = interleaved(fns, reps)
  row = {"model": name, "batch": batch, "reps": reps,
         **{f"{k}_ms": 1e3 * t for k, t in med.items()},
         **{f"{k}_over_float": med[k] / med["float"] for k in med if k != "float"},
         "paths": {k: dict(collections.Counter(p.values())) for k, p in paths.items()},
         "site_paths": paths, "load_average": os.getloadavg()}
  return row


def _int8(shape, key):
  return jax.random.randint(jax.random.key(key), shape, -127, 128, jnp.int32).astype(jnp.int8)


def micro(reps: int, quick: bool) -> list[dict]:
  """int8 -> int32 vs f32 for one dot (ViT MLP-like) and one conv (ResNet-20 stage-1 3x3)."""
  m = 16 if quick else 128 * 17  # ViT: 128 images x 17 tokens
  cases = {
      f"dot ({m}x64)x(64x128)": (
          ((m, 64), (64, 128)),
          lambda a, b, t: lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                                          preferred_element_type=t)),
      f"conv {'8' if quick else '128'}x32x32x16 * 3x3x16x16": (
          (((8 if quick else 128), 32, 32, 16), (3, 3, 16, 16)),
          lambda a, b, t: lax.conv_general_dilated(
              a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
              preferred_element_type=t)),
  }
  rows = []
  for name, ((sa, sb), op) in cases.items():
    ai, bi = _int8(sa, 0), _int8(sb, 1)
    af, bf = ai.astype(jnp.float32), bi.astype(jnp.float32)
    int_op = jax.jit(lambda a, b: op(a, b, jnp.int32))
    float_op = jax.jit(lambda a, b: op(a, b, jnp.float32))
    np.testing.assert_array_equal(int_op(ai, bi), float_op(af, bf).astype(jnp.int32))
    med = interleaved({"f32": lambda: float_op(af, bf), "int8": lambda: int_op(ai, bi)}, reps)
    rows.append({"op": name, "f32_ms": 1e3 * med["f32"], "int8_ms": 1e3 * med["int8"],
                 "int8_over_f32": med["int8"] / med["f32"], "reps": reps,
                 "load_average": os.getloadavg()})
  return rows


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="CNN only, batch 1 and 8, 3 reps")
  parser.add_argument("--reps", type=int, default=20)
  parser.add_argument("--out", default=None,
                      help="JSON path (default results/serve_latency_cpu.json; --quick: _quick)")
  args = parser.parse_args(argv)
  models, batches = (["cnn"], [1, 8]) if args.quick else (list(MODELS), [1, 128])
  reps = 3 if args.quick else args.reps
  rows = []
  for name in models:
    for batch in batches:
      rows.append(bench_model(name, batch, reps))
      r = rows[-1]
      print(f"{name:>9} batch {batch:>3}: float {r['float_ms']:.3f} ms, W8A8 {r['w8a8_ms']:.3f} "
            f"ms ({r['w8a8_over_float']:.2f}x), W4A16 {r['w4a16_ms']:.3f} ms "
            f"({r['w4a16_over_float']:.2f}x); paths W8A8 {r['paths']['w8a8']}, W4A16 "
            f"{r['paths']['w4a16']} (load {r['load_average'][0]:.1f})", flush=True)
  ops = micro(reps, args.quick)
  for r in ops:
    print(f"  {r['op']}: f32 {r['f32_ms']:.3f} ms, int8->int32 {r['int8_ms']:.3f} ms "
          f"({r['int8_over_f32']:.2f}x)")
  result = {"device": jax.devices()[0].device_kind, "host": platform.processor() or
            platform.machine(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "quick": args.quick, "models": rows, "ops": ops}
  _results.save(result, "serve_latency", quick=args.quick, out=args.out)
  return result


if __name__ == "__main__":
  main()
