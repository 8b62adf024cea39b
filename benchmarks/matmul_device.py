"""Device-timed sweep of the low-bit matmuls; every timed case is also a correctness check.

  python benchmarks/matmul_device.py                  # the full sweep (GPU/TPU), time-budgeted
  python benchmarks/matmul_device.py --tune           # also time tile variants at decode M
  python benchmarks/matmul_device.py --cpu-small      # CPU smoke run: tiny shapes, interpreted

Timing: a case is one jitted ``lax.fori_loop`` of ``R`` calls in which each call's ``x`` depends
on the previous result through one element (``x[0, 0] += 0 * y[0, 0]``), so XLA cannot hoist the
matmul; the same loop without the matmul is timed too, and device time per call is
``(T_loop - T_null) / R`` (medians of ``--reps`` runs). This removes Python dispatch, which
swamps a 2 us GEMV when calls are timed one by one. The loop returns its last ``y`` (of the
unchanged ``x``), compared with ``weight_only_reference`` / ``w8a8_reference``.

Sweep: M x (K, N) x bits x groups for "bf16" (XLA ``jnp.dot`` on a bf16 weight), "xla"
(``weight_only_xla``) and "pallas" (``weight_only_matmul``), plus W8A8 ("xla_w8a8",
"pallas_w8a8"). A correctness pass adds zero points (bf16 and f32 activations). GB/s counts the
minimum traffic (x + stored weight + y) and is given as a fraction of the HBM peak.

Writes ``matmul_device_<device>.json`` (rows, device name, config) and
``matmul_table_<device>.json``
(the dispatcher's format, see ``compressjax.kernels.tables``; copy it to
``compressjax/kernels/tables/<slug>.json`` to use it) under ``--out`` (default ``$OUT`` if set,
else ``benchmarks/results``). Needs only jax, numpy and ``compressjax.kernels`` / ``.qarray``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compressjax.kernels import (BlockConfig, Entry, Table, default_config, quantize_rows,
                                 save_table, tables, w8a8_matmul, w8a8_reference, w8a8_xla,
                                 weight_only_matmul, weight_only_reference, weight_only_xla)
from compressjax.kernels.weight_only import effective_group
from compressjax.qarray import QArray

FULL = dict(m=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            shapes=((4096, 4096), (8192, 8192), (8192, 28672), (28672, 8192), (11008, 4096)),
            bits=(8, 4, 2), groups=(None, 128, 64))
CPU_SMALL = dict(m=(1, 16), shapes=((256, 256),), bits=(4, 2), groups=(None, 64))
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "TPU v5 lite": 0.82e12,
                  "TPU v5p": 2.77e12, "TPU v6": 1.64e12, "TPU v4": 1.2e12}
TOLERANCE = 2e-2  # max |y - ref| / max |ref| for bf16 outputs (f32 accumulation)
TARGET_S = 2e-3  # loop length aimed at per timed run on the device


@dataclasses.dataclass
class Case:
  """One timed (or checked) call: ``fn(x, w)`` against ``ref`` rows."""

  fmt: str
  m: int
  k: int
  n: int
  bits: int | None
  group: int | None
  zero_point: bool
  dtype: str
  fn: object
  x: object
  w: object
  ref: object
  bytes: int
  config: BlockConfig | None = None
  timed: bool = True


def main() -> None:
  args = _parse()
  spec = CPU_SMALL if args.cpu_small else FULL
  device = jax.devices()[0]
  on_cpu = jax.default_backend() == "cpu"
  peak = _peak(device.device_kind, on_cpu)
  start = time.perf_counter()
  rows, skipped = [], 0
  pool = concurrent.futures.ThreadPoolExecutor(args.workers)
  print(f"device {device.device_kind!r} ({jax.default_backend()}), peak {peak / 1e9:.0f} GB/s")
  for phase in ("sweep", "tune") if args.tune else ("sweep",):
    for k, n in args.shapes or spec["shapes"]:
      if time.perf_counter() - start > args.budget_s:
        skipped += 1
        continue
      cases = list(_cases(phase, k, n, spec, args, on_cpu))
      compiled = [pool.submit(_compile, c, _reps(c, peak, on_cpu), on_cpu) for c in cases]
      for case, future in zip(cases, compiled):
        if time.perf_counter() - start > args.budget_s:
          skipped += 1
          continue
        row = _run(case, future, peak, args.reps, on_cpu)
        rows.append(row)
        _print(row)
  _speedups(rows)
  failures = [r for r in rows if not r.get("ok", False)]
  result = {
      "device_kind": device.device_kind, "platform": jax.default_backend(),
      "label": "CPU smoke run (interpreted kernels; times are not device times)"
               if on_cpu else "device timed", "jax": jax.__version__,
      "peak_bandwidth_bytes_per_s": peak,
      "timing": "fori_loop of R calls" + ("" if on_cpu else " minus the same loop without them"),
      "config": {"cpu_small": args.cpu_small, "tune": args.tune, "budget_s": args.budget_s,
                 "reps": args.reps, **{key: list(v) for key, v in spec.items()}},
      "elapsed_s": time.perf_counter() - start, "skipped_for_budget": skipped,
      "failures": len(failures), "rows": rows,
  }
  out = args.out or pathlib.Path(os.environ.get("OUT") or pathlib.Path(__file__).parent / "results")
  name = tables.slug(device.device_kind) + ("_cpu-small" if args.cpu_small else "")
  out.mkdir(parents=True, exist_ok=True)
  (out / f"matmul_device_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
  save_table(_table(rows, device.device_kind), out / f"matmul_table_{name}.json")
  print(f"\n{len(rows)} cases, {len(failures)} failed, {skipped} skipped for the budget, "
        f"{result['elapsed_s']:.0f} s; wrote {out}/matmul_device_{name}.json and matmul_table_{name}.json")
  raise SystemExit(1 if failures else 0)


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--cpu-small", action="store_true", help="tiny shapes, kernels interpreted")
  p.add_argument("--tune", action="store_true", help="also time tile variants at M <= 16")
  p.add_argument("--shapes", type=lambda s: tuple(map(int, s.split(","))), nargs="+",
                 help="weight shapes K,N (default: the sweep's)")
  p.add_argument("--budget-s", type=float, default=420.0, help="stop starting cases after this")
  p.add_argument("--reps", type=int, default=5, help="timed runs of each loop (median)")
  p.add_argument("--workers", type=int, default=8, help="threads compiling ahead")
  p.add_argument("--out", type=pathlib.Path, help="output folder (default $OUT or results/)")
  return p.parse_args()


def _peak(kind: str, on_cpu: bool) -> float:
  for name, value in PEAK_BANDWIDTH.items():
    if name.lower() in kind.lower():
      return value
  x = jnp.ones((1 << 24,), jnp.float32)  # unknown device: best of 10 reads of 64 MiB
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  best = min(_wall(lambda: f(x).block_until_ready()) for _ in range(10))
  return x.nbytes / best


def _cases(phase: str, k: int, n: int, spec: dict, args, on_cpu: bool):
  """The cases of one weight shape; "sweep": all formats + zero-point checks, "tune": tiles."""
  platform = "interpret" if on_cpu else jax.default_backend()
  key = jax.random.key(k * 7 + n)
  m_all = spec["m"]
  x_all = jax.random.normal(key, (max(m_all), k), jnp.float32).astype(jnp.bfloat16)
  if phase == "sweep":
    w_bf16 = (jax.random.normal(key, (k, n), jnp.float32) * 0.02).astype(jnp.bfloat16)
    ref = jnp.dot(x_all, w_bf16, preferred_element_type=jnp.float32)
    for m in m_all:
      yield Case("bf16", m, k, n, None, None, False, "bfloat16", _bf16_dot, x_all[:m], w_bf16,
                 ref[:m], x_all[:m].nbytes + w_bf16.nbytes + m * n * 2)
  for bits in spec["bits"]:
    for group in spec["groups"]:
      for zero in (False, True) if phase == "sweep" else (False,):
        w = _weight(key, k, n, bits, group, zero)
        for dtype in (("bfloat16", "float32") if zero else ("bfloat16",)):
          xs = x_all.astype(dtype)
          ref = weight_only_reference(xs, w, out_dtype=jnp.float32)
          ms = (16,) if zero else m_all  # zero points: correctness only, at one M
          for m in ms if phase == "sweep" else [m for m in m_all if m <= 16]:
            size = xs[:m].nbytes + w.nbytes + m * n * 2
            base = dict(m=m, k=k, n=n, bits=bits, group=group, zero_point=zero, dtype=dtype,
                        x=xs[:m], w=w, ref=ref[:m], bytes=size, timed=not zero)
            configs = _configs(platform, m, n, w, phase)
            for config in configs:
              yield Case("pallas", fn=_pallas_fn(config, on_cpu), config=config, **base)
            if phase == "sweep" and not zero:
              yield Case("xla", fn=weight_only_xla, **base)
  if phase == "sweep":
    w8 = _weight(key, k, n, 8, None, False)
    ref = _w8a8_ref(x_all, w8)
    for m in m_all:
      size = x_all[:m].nbytes + w8.nbytes + m * n * 2
      config = default_config(platform, m, n, k)
      for fmt, fn in (("xla_w8a8", _w8a8_fn(None, on_cpu)),
                      ("pallas_w8a8", _w8a8_fn(config, on_cpu))):
        yield Case(fmt, m, k, n, 8, None, False, "bfloat16", fn, x_all[:m], w8, ref[:m], size,
                   config if fmt == "pallas_w8a8" else None)


def _configs(platform: str, m: int, n: int, w: QArray, phase: str) -> list[BlockConfig]:
  """The default tiles ("sweep") or variants around them ("tune")."""
  base = default_config(platform, m, n, w.packed.shape[0], group=effective_group(w))
  if phase == "sweep":
    return [base]
  variants = [dataclasses.replace(base, block_n=base.block_n * 2, split_k=base.split_k * 2),
              dataclasses.replace(base, split_k=base.split_k * 2),
              dataclasses.replace(base, block_k=base.block_k * 2),
              dataclasses.replace(base, num_stages=(base.num_stages or 3) + 1)]
  return list(dict.fromkeys(variants))


def _weight(key, k: int, n: int, bits: int, group: int | None, zero: bool) -> QArray:
  key = jax.random.fold_in(key, bits * 1000 + (group or 0) + zero)
  lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1)
  codes = jax.random.randint(key, (k, n), lo, hi)
  rows = k // group if group else 1
  scale = jax.random.uniform(jax.random.fold_in(key, 1), (rows, n), jnp.float32, 0.5, 1.5)
  zero_point = jax.random.uniform(jax.random.fold_in(key, 2), (rows, n), jnp.float32, -1, 1)
  return QArray.from_codes(codes, scale / 2 ** (bits - 1), zero_point if zero else None,
                           bits=bits, signed=True, group_size=group)


def _bf16_dot(x, w):
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _pallas_fn(config: BlockConfig, on_cpu: bool):
  def fn(x, w):
    return weight_only_matmul(x, w, config=config, interpret=on_cpu)
  return fn


def _w8a8_fn(config: BlockConfig | None, on_cpu: bool):
  def fn(x, w):
    x_q, x_scale = quantize_rows(x)
    args = (x_q, x_scale, w.packed, w.scale)
    if config is None:
      return w8a8_xla(*args, w_offset=128, out_dtype=x.dtype)
    return w8a8_matmul(*args, w_offset=128, out_dtype=x.dtype, config=config, interpret=on_cpu)
  return fn


def _w8a8_ref(x, w: QArray):
  x_q, x_scale = quantize_rows(x)
  return w8a8_reference(x_q, x_scale, w.packed, w.scale, w_offset=128)


def _reps(case: Case, peak: float, on_cpu: bool) -> int:
  """Calls per loop: about ``TARGET_S`` of traffic at peak, a power of two (shared null loops)."""
  if on_cpu or not case.timed:
    return 2
  calls = TARGET_S / max(case.bytes / peak, 1e-7)
  return int(2 ** round(math.log2(min(max(calls, 8), 1024))))


def _loop(fn, reps: int):
  """``reps`` dependent calls of ``fn(x, w)`` in one fori_loop; returns the last result."""
  def run(x, w):
    out = jax.eval_shape(fn, x, w)

    def body(_, carry):
      x, _ = carry
      y = fn(x, w)
      return x.at[0, 0].add((y[0, 0] * 0).astype(x.dtype)), y

    return lax.fori_loop(0, reps, body, (x, jnp.zeros(out.shape, out.dtype)))[1]
  return jax.jit(run)


def _null(x, w):
  return x  # the dependency update alone: what _loop costs without a matmul


def _compile(case: Case, reps: int, on_cpu: bool):
  """The loop and, on a device, its null loop (the CPU smoke run times the loop alone)."""
  loop = _loop(case.fn, reps).lower(case.x, case.w).compile()
  timed_null = case.timed and not on_cpu
  null = _loop(_null, reps).lower(case.x, case.w).compile() if timed_null else None
  return reps, loop, null


def _run(case: Case, future, peak: float, reps_timed: int, on_cpu: bool) -> dict:
  row = {"format": case.fmt, "m": case.m, "k": case.k, "n": case.n, "bits": case.bits,
         "group": case.group, "zero_point": case.zero_point, "dtype": case.dtype,
         "bytes": case.bytes,
         "config": None if case.config is None else dataclasses.asdict(case.config)}
  try:
    reps, loop, null = future.result()
    y = np.asarray(loop(case.x, case.w).astype(jnp.float32))
    ref = np.asarray(case.ref, np.float32)
    err = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
    row.update(max_rel_err=err, ok=bool(err <= TOLERANCE))
    if case.fmt == "xla" and case.m == max(CPU_SMALL["m"] if on_cpu else FULL["m"]):
      row["xla_fused"] = _dequant_fused(loop.as_text())
    if case.timed:
      t_loop = _median(lambda: loop(case.x, case.w).block_until_ready(), reps_timed)
      t_null = _median(lambda: null(case.x, case.w).block_until_ready(), reps_timed) if null else 0
      us = max(t_loop - t_null, 1e-9) / reps * 1e6
      row.update(reps=reps, us=us, loop_us=t_loop / reps * 1e6, gbps=case.bytes / us / 1e3,
                 roofline_fraction=case.bytes / (us * 1e-6) / peak)
  except Exception as e:  # one failing lowering must not end the sweep
    row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
  return row


def _dequant_fused(hlo: str) -> bool:
  """Whether one computation of the optimized HLO holds both a dot and the code unpacking."""
  return any(("dot(" in c or "__triton_gemm" in c) and "shift-right-logical" in c
             for c in hlo.split("\n\n"))


def _median(fn, reps: int) -> float:
  fn()
  return statistics.median(_wall(fn) for _ in range(reps))


def _wall(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _speedups(rows: list[dict]) -> None:
  bf16 = {(r["m"], r["k"], r["n"]): r["us"] for r in rows if r["format"] == "bf16" and "us" in r}
  for r in rows:
    base = bf16.get((r["m"], r["k"], r["n"]))
    if "us" in r and base:
      r["speedup_vs_bf16"] = base / r["us"]


def _table(rows: list[dict], device_kind: str) -> Table:
  """Per (kind, bits, group, M, K, N): bf16 / xla / best pallas time and the best tiles."""
  bf16 = {(r["m"], r["k"], r["n"]): r["us"] for r in rows if r["format"] == "bf16" and "us" in r}
  best: dict[tuple, dict] = {}
  for r in rows:
    if "us" not in r or r["format"] == "bf16" or not r["ok"]:
      continue
    kind = "w8a8" if r["format"].endswith("w8a8") else "weight_only"
    backend = "pallas" if r["format"].startswith("pallas") else "xla"
    key = (kind, r["bits"], r["group"], r["zero_point"], r["m"], r["k"], r["n"])
    slot = best.setdefault(key, {"us": {}, "config": None})
    if backend not in slot["us"] or r["us"] < slot["us"][backend]:
      slot["us"][backend] = r["us"]
      if backend == "pallas":
        slot["config"] = BlockConfig(**r["config"])
  entries = []
  for (kind, bits, group, zero, m, k, n), slot in sorted(best.items(), key=str):
    us = dict(slot["us"])
    if (m, k, n) in bf16:
      us["bf16"] = bf16[(m, k, n)]
    entries.append(Entry(kind, bits, group, zero, m, k, n, us, slot["config"]))
  return Table(device_kind, jax.default_backend(), tuple(entries), jax.__version__)


def _print(r: dict) -> None:
  head = (f"{r['format']:<12} M={r['m']:<4} K={r['k']:<6} N={r['n']:<6} w{r['bits'] or 16:<2} "
          f"g={r['group'] or '-':<4} {'zp ' if r['zero_point'] else '   '}{r['dtype']:<9}")
  if "error" in r:
    print(f"{head} ERROR {r['error'][:120]}")
    return
  timing = (f"{r['us']:9.2f} us {r['gbps']:8.1f} GB/s {100 * r['roofline_fraction']:5.1f}% peak"
            if "us" in r else "(correctness only)")
  print(f"{head} {timing}  err {r['max_rel_err']:.1e} {'ok' if r['ok'] else 'FAIL'}")


if __name__ == "__main__":
  main()
