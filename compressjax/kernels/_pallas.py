"""Plumbing shared by the Pallas kernels: block configs, padding, compiler params, input checks.

GPU (Triton) kernels use the grid ``(M blocks, N blocks, K splits)`` and loop over their own K
range inside the kernel, because Triton runs all grid points in parallel (a grid axis cannot
carry an accumulator there). TPU (Mosaic) kernels put K on the grid as an "arbitrary" (sequential)
axis and keep the accumulator in VMEM scratch. ``interpret=True`` runs either anywhere (CPU tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

try:  # Triton-lowering params; named TritonCompilerParams before jax 0.6.
  from jax.experimental.pallas import triton as _pltriton
except ImportError:  # pragma: no cover - depends on the jax build
  _pltriton = None
try:  # Mosaic TPU params; named TPUCompilerParams before jax 0.6.
  from jax.experimental.pallas import tpu as _pltpu
except ImportError:  # pragma: no cover - depends on the jax build
  _pltpu = None

Array = jax.Array

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Tile sizes of one kernel launch.

  Attributes:
    block_m: rows of ``x`` per program (Triton dots need >= 16).
    block_n: output columns per program.
    block_k: contraction rows loaded per loop step. For weight-only kernels these are *packed*
      rows: one step covers ``8 // bits`` planes of ``block_k`` logical rows each. Rounded up to
      a multiple of the weight's group size.
    split_k: programs sharing one output tile along K (their f32 partial sums are added by XLA);
      raises parallelism when ``M`` and ``N`` give too few programs (decode shapes). Any value:
      the last split takes the remaining K blocks (GPU kernels only).
    num_warps, num_stages: Triton launch parameters (ignored elsewhere; None = Triton default).
  """

  block_m: int = 16
  block_n: int = 128
  block_k: int = 128
  split_k: int = 1
  num_warps: int | None = None
  num_stages: int | None = None

  def __post_init__(self):
    for name in ("block_m", "block_n", "block_k", "split_k"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"BlockConfig.{name}={value!r} must be a positive integer")


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def round_up(a: int, b: int) -> int:
  return cdiv(a, b) * b


def pad_to(x: Array, shape: tuple[int, ...]) -> Array:
  """Zero-pads ``x`` at the end of each axis up to ``shape`` (no-op when already there)."""
  pads = [(0, t - s) for s, t in zip(x.shape, shape)]
  if any(p < 0 for _, p in pads):
    raise ValueError(f"cannot pad shape {x.shape} down to {shape}")
  return jnp.pad(x, pads) if any(p for _, p in pads) else x


def split_steps(blocks: int, split_k: int) -> tuple[int, int]:
  """``(splits, steps per split)`` covering ``blocks`` K-blocks; splits never exceed blocks."""
  splits = max(1, min(split_k, blocks))
  steps = cdiv(blocks, splits)
  return cdiv(blocks, steps), steps


def compiler_params(grid_rank: int, config: BlockConfig, platform: str | None = None,
                    semantics: tuple[str, ...] | None = None) -> Any:
  """Compiler params for ``platform`` (default: the current one): Triton on GPU, Mosaic on TPU.

  ``semantics`` are Mosaic's per-axis dimension semantics (default: all "parallel").
  """
  platform = platform or jax.default_backend()
  if platform in ("gpu", "cuda", "rocm") and _pltriton is not None:
    cls = getattr(_pltriton, "CompilerParams", None) or getattr(_pltriton, "TritonCompilerParams")
    return cls(num_warps=config.num_warps, num_stages=config.num_stages)
  if platform == "tpu" and _pltpu is not None:
    cls = getattr(_pltpu, "CompilerParams", None) or getattr(_pltpu, "TPUCompilerParams")
    return cls(dimension_semantics=semantics or ("parallel",) * grid_rank)
  raise ValueError(
      f"Pallas kernels compile only on GPU or TPU, but the platform is {platform!r}; "
      "pass interpret=True (or backend='interpret' to the dispatcher) to run them here"
  )


def is_gpu(platform: str | None) -> bool:
  return (platform or jax.default_backend()) in ("gpu", "cuda", "rocm")


def check_float(x: Array, name: str, where: str) -> None:
  if x.dtype not in FLOAT_DTYPES:
    allowed = ", ".join(jnp.dtype(d).name for d in FLOAT_DTYPES)
    raise TypeError(f"{where}: {name} must be a float array ({allowed}), got dtype {x.dtype}")


def check_rank(x: Array, rank: int, name: str, where: str) -> None:
  if x.ndim != rank:
    raise ValueError(f"{where}: {name} must have rank {rank}, got shape {x.shape}")


def check_k(x_k: int, w_k: int, w_shape: tuple[int, ...], where: str) -> None:
  if x_k != w_k:
    raise ValueError(
        f"{where}: x has contraction size K={x_k} (last axis) but the weight has K={w_k} "
        f"(weight shape {w_shape}); they must match"
    )
