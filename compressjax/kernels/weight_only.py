"""Weight-only low-bit matmul (W8A16, W4A16, W2A16): ``x @ dequantize(w)``, dequant fused.

The weight stays packed in HBM and is read once; codes become floats in registers by bit tricks.
Two kernels share the math (``_group_dot``): ``_weight_only_gpu`` (Triton: K loop inside the
program, split-K for decode shapes) and ``_weight_only_tpu`` (Mosaic: K on the grid, VMEM
accumulator). ``weight_only_matmul`` picks by platform; both run in interpret mode anywhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.kernels import _pallas
from compressjax.kernels._weight_only_gpu import weight_only_gpu
from compressjax.kernels._weight_only_tpu import weight_only_tpu
from compressjax.qarray import QArray

Array = jax.Array

_WHERE = "weight_only_matmul"


def weight_only_reference(x: Array, w: QArray, *, out_dtype=None) -> Array:
  """Defines the kernel's meaning: ``x @ w.dequantize()`` in f32 (highest precision)."""
  check_operands(x, w, "weight_only_reference")
  wd = w.dequantize(jnp.float32).reshape(w.k, w.n)
  y = jnp.dot(x.astype(jnp.float32), wd, precision=lax.Precision.HIGHEST)
  return y.astype(out_dtype or x.dtype)


def supports(w: QArray) -> bool:
  """Whether the kernel handles this weight: codes stored in bytes (bits <= 8)."""
  return isinstance(w, QArray) and w.packed.dtype == jnp.uint8


def weight_only_matmul(
    x: Array,
    w: QArray,
    *,
    config: _pallas.BlockConfig | None = None,
    out_dtype=None,
    interpret: bool = False,
    platform: str | None = None,
) -> Array:
  """Pallas ``x (M, K) @ dequantize(w) (K, N)``; ``x`` float32/bfloat16/float16.

  The dot runs in ``x.dtype`` on exact integer codes (or on the scaled tile, see
  ``_group_dot``) with f32 accumulation; the result is cast to ``out_dtype`` (default
  ``x.dtype``). ``config`` sets the tiles (see ``BlockConfig``). ``platform`` ("gpu" / "tpu",
  default ``jax.default_backend()``) selects the kernel and its lowering, e.g. ahead-of-time
  from a CPU host; with ``interpret=True`` it selects which kernel to interpret (default "gpu").
  """
  check_operands(x, w, _WHERE)
  if not supports(w):
    raise ValueError(
        f"{_WHERE}: w has bits={w.bits} stored as {w.packed.dtype}; the kernel reads byte "
        "storage only (bits <= 8); use the XLA fallback"
    )
  platform = platform or ("gpu" if interpret else jax.default_backend())
  if platform not in ("gpu", "cuda", "rocm", "tpu"):
    _pallas.compiler_params(3, _pallas.BlockConfig(), platform)  # raises, naming the platform
  kernel = weight_only_tpu if platform == "tpu" else weight_only_gpu
  return kernel(x, w, group=effective_group(w), config=config or _pallas.BlockConfig(),
                out_dtype=jnp.dtype(out_dtype or x.dtype), interpret=interpret,
                platform=platform)


def effective_group(w: QArray) -> int | None:
  """Rows of K sharing a scale/zero row in the kernel; None when one row covers all of K."""
  zero_rows = 1 if w.zero_point is None else w.zero_point.shape[0]
  return w.group_size if max(w.scale.shape[0], zero_rows) > 1 else None


def check_operands(x: Array, w: QArray, where: str) -> None:
  """Raises TypeError/ValueError naming the bad argument (shared with the XLA fallback)."""
  if not isinstance(w, QArray):
    raise TypeError(f"{where}: w must be a QArray, got {type(w).__name__}")
  _pallas.check_float(x, "x", where)
  _pallas.check_rank(x, 2, "x", where)
  _pallas.check_k(x.shape[1], w.k, w.shape, where)
  group = w.group_size
  if group is not None and (group <= 0 or w.k % group):
    raise ValueError(f"{where}: w.group_size={group} must be a positive divisor of K={w.k}")
  allowed = {(1, 1), (1, w.n)} | ({(w.k // group, w.n)} if group else set())
  for name in ("scale", "zero_point"):
    value = getattr(w, name)
    if value is not None and tuple(value.shape) not in allowed:
      raise ValueError(
          f"{where}: w.{name} has shape {tuple(value.shape)}; allowed for K={w.k}, N={w.n}, "
          f"group_size={group}: {sorted(allowed)}"
      )
