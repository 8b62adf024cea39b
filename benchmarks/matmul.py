"""Wall-clock benchmark of the dispatcher's paths against a bf16 dot (a script, never a test).

One Python call per sample: on a GPU this measures dispatch more than a small matmul (a 4096^2
int4 GEMV is ~2 us on an H200). Device timing lives in ``benchmarks/matmul_device.py``.

Full sweep (meant for a GPU/TPU):
  python benchmarks/matmul.py
  python benchmarks/matmul.py --m 1 16 --shapes 4096,4096 --bits 4 --formats bf16 pallas_w4a16
CPU smoke configuration (XLA paths at reduced shapes, kernels only at tiny shapes in interpret
mode), whose JSON is committed:
  python benchmarks/matmul.py --cpu-small

Per (M, K, N, format) it reports the median wall time of ``--iters`` calls after ``--warmup``
(each ``block_until_ready``), TFLOP/s (2MKN / t), GB/s and the fraction of the device's peak
memory bandwidth. Bytes are the format's minimum traffic: activations + stored weight (codes,
scales, zero points) + output; an XLA dequantize-then-dot moves more than that, which is what the
fraction shows. Results land in benchmarks/results/matmul_<device kind>[_cpu-small].json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform as host_platform
import re
import statistics
import time
import traceback

import jax
import jax.numpy as jnp

from compressjax.kernels import choose_backend, matmul
from compressjax.qarray import QArray

FULL_M = (1, 16, 64, 128, 512, 2048)
FULL_SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096), (8192, 8192))
SMALL_M = (1, 16, 64)
SMALL_SHAPES = ((512, 512), (1024, 1024), (1024, 2752), (2752, 1024))
TINY_KN = 512 * 512  # interpret-mode kernels only up to this many weight elements

# Peak HBM bandwidth in bytes/s, matched as a substring of jax.devices()[0].device_kind.
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100": 1.56e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "TPU v6": 1.64e12,
    "TPU v5p": 2.77e12,
    "TPU v5": 0.819e12,  # v5e ("TPU v5 lite")
    "TPU v4": 1.2e12,
}


def main() -> None:
  args = _parse()
  device = jax.devices()[0]
  kind = device.device_kind
  on_cpu = jax.default_backend() == "cpu"
  peak, peak_source = _peak_bandwidth(kind, args.peak_gbps)
  formats = args.formats or _default_formats(args.bits)
  m_list = args.m or (SMALL_M if args.cpu_small else FULL_M)
  shapes = args.shapes or (SMALL_SHAPES if args.cpu_small else FULL_SHAPES)
  key = jax.random.key(0)
  rows = []
  print(f"device {kind!r}, peak bandwidth {peak / 1e9:.0f} GB/s ({peak_source})")
  print(f"{'M':>5} {'K':>6} {'N':>6} {'format':<16} {'backend':<15} {'us':>10} "
        f"{'TFLOP/s':>8} {'GB/s':>8} {'%peakBW':>7} {'vs bf16':>7}")
  for k, n in shapes:
    weights = _weights(key, k, n, args.bits, args.group)
    for m in m_list:
      x = jax.random.normal(jax.random.fold_in(key, m), (m, k), jnp.bfloat16)
      bf16_us = None
      for name in formats:
        if on_cpu and _is_kernel(name) and k * n > TINY_KN:
          continue  # interpret mode is an emulator: tiny shapes only
        row = _measure(name, x, weights, args, on_cpu)
        if name == "bf16":
          bf16_us = row.get("us")
        _derive(row, peak, bf16_us)
        _print_row(row)
        rows.append(row)
  result = {
      "device_kind": kind,
      "platform": jax.default_backend(),
      "jax": jax.__version__,
      "host": host_platform.node() if args.record_host else None,
      "host_load_avg_1m": os.getloadavg()[0],  # > CPU count: timings are contended, noisy
      "peak_bandwidth_bytes_per_s": peak,
      "peak_bandwidth_source": peak_source,
      "config": {
          "cpu_small": args.cpu_small, "bits": args.bits, "group_size": args.group,
          "warmup": args.warmup, "iters": args.iters, "m": list(m_list),
          "shapes": [list(s) for s in shapes], "formats": formats,
      },
      "rows": rows,
  }
  out = args.out or _default_out(kind, args.cpu_small)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(f"\nwrote {out}")


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--cpu-small", action="store_true", help="reduced shapes; kernels interpreted")
  p.add_argument("--m", type=int, nargs="+", help="rows of x (tokens)")
  p.add_argument("--shapes", type=_shape, nargs="+", help="weight shapes as K,N")
  p.add_argument("--bits", type=int, nargs="+", default=[4], help="weight-only bit-widths")
  p.add_argument("--group", type=int, default=128, help="group size of weight-only weights")
  p.add_argument("--formats", nargs="+", help="subset of the format names (default: all)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--peak-gbps", type=float, help="override the peak bandwidth (GB/s)")
  p.add_argument("--out", type=pathlib.Path, help="JSON path (default under results/)")
  p.add_argument("--record-host", action="store_true", help="store the host name in the JSON")
  return p.parse_args()


def _shape(text: str) -> tuple[int, int]:
  k, n = (int(v) for v in text.split(","))
  return k, n


def _default_formats(bits: list[int]) -> list[str]:
  names = ["bf16"]
  for b in bits:
    names += [f"xla_w{b}a16", f"dispatch_w{b}a16", f"pallas_w{b}a16"]
  return names + ["xla_w8a8", "dispatch_w8a8", "pallas_w8a8"]


def _is_kernel(name: str) -> bool:
  return name.startswith("pallas_")


def _weights(key, k: int, n: int, bits: list[int], group: int) -> dict:
  """bf16 weight, one weight-only QArray per bit-width, one W8A8 QArray (all random)."""
  out = {"bf16": (jax.random.normal(key, (k, n), jnp.float32) * 0.02).astype(jnp.bfloat16)}
  for b in bits + [8]:
    name = f"w{b}"
    if name in out:
      continue
    codes = jax.random.randint(jax.random.fold_in(key, b), (k, n), -(2 ** (b - 1)), 2 ** (b - 1))
    gs = group if k % group == 0 else None
    scale = jnp.full((k // gs if gs else 1, n), 0.01, jnp.float32)
    out[name] = QArray.from_codes(codes, scale, bits=b, signed=True, group_size=gs)
  codes = jax.random.randint(jax.random.fold_in(key, 99), (k, n), -127, 128)
  out["w8a8"] = QArray.from_codes(codes, jnp.full((1, n), 0.01), bits=8, signed=True)
  return out


def _bf16_dot(x, w):
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _format_call(name: str, on_cpu: bool):
  """``(weight key, fn(x, w), backend label)`` for a format name."""
  kernel_backend = "interpret" if on_cpu else "pallas"
  if name == "bf16":
    return "bf16", _bf16_dot, "xla"
  match = re.fullmatch(r"(xla|dispatch|pallas)_w(\d+)a(16|8)", name)
  if not match:
    raise ValueError(f"unknown format {name!r}")
  how, bits, act = match.group(1), int(match.group(2)), int(match.group(3))
  backend = {"xla": "xla", "dispatch": None, "pallas": kernel_backend}[how]
  act_bits = 8 if act == 8 else None
  wkey = "w8a8" if act_bits else f"w{bits}"
  return wkey, lambda x, w: matmul(x, w, backend=backend, act_bits=act_bits), backend


def _measure(name: str, x, weights: dict, args, on_cpu: bool) -> dict:
  m, k = x.shape
  wkey, fn, backend = _format_call(name, on_cpu)
  w = weights[wkey]
  n = w.shape[-1]
  if backend is None:
    backend = f"auto:{choose_backend(m, w, act_bits=8 if wkey == 'w8a8' else None)}"
  w_bytes = w.nbytes if isinstance(w, QArray) else w.size * w.dtype.itemsize
  row = {"format": name, "backend": backend, "m": m, "k": k, "n": n,
         "bytes": int(x.size * 2 + w_bytes + m * n * 2)}
  try:
    jitted = jax.jit(fn)
    for _ in range(args.warmup):
      jitted(x, w).block_until_ready()
    times = []
    for _ in range(args.iters):
      start = time.perf_counter()
      jitted(x, w).block_until_ready()
      times.append(time.perf_counter() - start)
    row["us"] = statistics.median(times) * 1e6
  except Exception as e:  # a lowering that fails on one device must not end the sweep
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    traceback.print_exc(limit=1)
  return row


def _derive(r: dict, peak: float, bf16_us: float | None) -> None:
  """TFLOP/s, GB/s, fraction of peak bandwidth and speedup against bf16 at the same shape."""
  if "us" not in r:
    return
  sec = r["us"] * 1e-6
  r["tflops"] = 2 * r["m"] * r["k"] * r["n"] / sec / 1e12
  r["gbps"] = r["bytes"] / sec / 1e9
  r["roofline_fraction"] = r["bytes"] / sec / peak
  r["speedup_vs_bf16"] = bf16_us / r["us"] if bf16_us else None


def _print_row(r: dict) -> None:
  head = f"{r['m']:>5} {r['k']:>6} {r['n']:>6} {r['format']:<16} {r['backend']:<15}"
  if "us" not in r:
    print(f"{head} ERROR {r['error'][:80]}")
    return
  speedup = f"{r['speedup_vs_bf16']:>6.2f}x" if r["speedup_vs_bf16"] else f"{'-':>7}"
  print(f"{head} {r['us']:>10.1f} {r['tflops']:>8.3f} {r['gbps']:>8.1f} "
        f"{100 * r['roofline_fraction']:>6.1f}% {speedup}")


def _peak_bandwidth(kind: str, override_gbps: float | None) -> tuple[float, str]:
  if override_gbps:
    return override_gbps * 1e9, "--peak-gbps"
  for name, value in PEAK_BANDWIDTH.items():
    if name.lower() in kind.lower():
      return value, f"table entry {name!r}"
  return _measure_bandwidth(), "measured: best-of-10 read bandwidth of a jitted sum over 64 MiB"


def _measure_bandwidth() -> float:
  """Read bandwidth of a jitted sum over 64 MiB, best of 10 (devices missing from the table)."""
  x = jnp.ones((16 * 1024 * 1024,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  times = []
  for _ in range(10):
    start = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return x.size * 4 / min(times)


def _default_out(kind: str, cpu_small: bool) -> pathlib.Path:
  slug = re.sub(r"[^A-Za-z0-9]+", "_", kind).strip("_") or "unknown"
  suffix = "_cpu-small" if cpu_small else ""
  return pathlib.Path(__file__).parent / "results" / f"matmul_{slug}{suffix}.json"


if __name__ == "__main__":
  main()
