"""Default Pallas tiles per shape: a small table by M, then split-K to fill the GPU.

These are the starting points the device sweep (``benchmarks/matmul_device.py``) measures and
varies; a measured table's ``config`` replaces them where one exists (see ``tables``).
"""

from __future__ import annotations

import jax

from compressjax.kernels._pallas import BlockConfig, cdiv

# GPU (Triton): (largest M, block_m, block_n, block_k in packed rows, num_warps, num_stages).
# Decode rows: narrow N tiles give enough programs without split-K, long K loops pipeline.
GPU_TILES = (
    (16, 16, 64, 128, 4, 4),
    (32, 32, 64, 128, 4, 4),
    (64, 64, 128, 64, 4, 3),
    (None, 128, 128, 64, 8, 3),
)
MIN_BLOCK_N = 32  # 32 packed bytes per row: one DRAM sector
MIN_STEPS = 4  # K steps per program below which the loads cannot be pipelined


def default_config(platform: str, m: int, n: int, rows: int, *,
                   group: int | None = None) -> BlockConfig:
  """Tiles for ``m`` rows of ``x``, ``n`` columns and ``rows`` contraction rows (packed rows
  for weight-only kernels).

  GPU: the row of ``GPU_TILES`` for ``m``; at decode sizes ``block_n`` halves (down to
  ``MIN_BLOCK_N``) while the tiles would fill under half the SMs, then ``split_k`` raises the
  program count towards one wave while each split keeps at least ``MIN_STEPS`` K steps.
  TPU: ``block_m`` up to 256, ``block_n`` 256 lanes, ``block_k`` 512 (the kernel rounds it to
  whole scale tiles). Interpret mode (anything else): large tiles, few programs.
  """
  platform = "gpu" if platform in ("gpu", "cuda", "rocm") else platform
  if platform == "gpu":
    _, bm, bn, bk, warps, stages = next(t for t in GPU_TILES if t[0] is None or m <= t[0])
    bk = max(bk, group or 0)
    sms = core_count()
    while bm <= 32 and bn > MIN_BLOCK_N and cdiv(m, bm) * cdiv(n, bn) < sms // 2:
      bn //= 2
    tiles = cdiv(m, bm) * cdiv(n, bn)
    split = max(1, min(cdiv(rows, bk) // MIN_STEPS, round(sms / tiles)))
    return BlockConfig(bm, bn, bk, split, num_warps=warps, num_stages=stages)
  if platform == "tpu":
    bm = m if m <= 16 else min(256, -(-m // 16) * 16)
    return BlockConfig(bm, 256, 512)
  return BlockConfig(min(128, -(-m // 8) * 8), 128, 128)


def core_count() -> int:
  """Streaming multiprocessors of the first device (132, an H100/H200, when unknown)."""
  return int(getattr(jax.devices()[0], "core_count", 0) or 132)
