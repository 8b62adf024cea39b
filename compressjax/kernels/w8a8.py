"""W8A8 matmul: int8 activations x int8 weights -> int32 accumulation -> float output.

``y[m, n] = (sum_k xq[m, k] * (wq[k, n] - w_offset)) * x_scale[m] * w_scale[n]``: per-token
activation scales (dynamic, symmetric absmax, see :func:`quantize_rows`) times per-channel (or
per-tensor) weight scales. ``w_offset`` lets the kernel read a signed 8-bit ``QArray``'s unsigned
storage (codes + 128) directly, converting to int8 in registers instead of in an extra HBM pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from compressjax.kernels import _pallas

Array = jax.Array

_INT8_MAX = 127


def quantize_rows(x: Array) -> tuple[Array, Array]:
  """Symmetric per-row int8 quantization: ``x ~= q * scale``, ``q`` in [-127, 127].

  Returns ``(q int8 (..., K), scale float32 (..., 1))``; an all-zero row gets scale 0.
  """
  _pallas.check_float(x, "x", "quantize_rows")
  xf = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(xf), axis=-1, keepdims=True) / _INT8_MAX
  q = jnp.round(xf / jnp.where(scale > 0, scale, 1.0))
  return jnp.clip(q, -_INT8_MAX, _INT8_MAX).astype(jnp.int8), scale


def w8a8_reference(
    x_q: Array, x_scale: Array, w_codes: Array, w_scale: Array, *, w_offset: int = 0,
    out_dtype=jnp.float32,
) -> Array:
  """Defines the kernel's meaning with an exact int32 matmul in plain ``jnp``."""
  check_operands(x_q, x_scale, w_codes, w_scale, w_offset, "w8a8_reference")
  w = w_codes.astype(jnp.int32) - w_offset
  acc = jnp.dot(x_q.astype(jnp.int32), w, preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * x_scale * w_scale).astype(out_dtype)


def w8a8_matmul(
    x_q: Array,
    x_scale: Array,
    w_codes: Array,
    w_scale: Array,
    *,
    w_offset: int = 0,
    out_dtype=jnp.float32,
    config: _pallas.BlockConfig | None = None,
    interpret: bool = False,
    platform: str | None = None,
) -> Array:
  """Pallas W8A8 matmul.

  Args:
    x_q: int8 activations ``(M, K)``.
    x_scale: float per-row scales ``(M, 1)`` (or ``(1, 1)``).
    w_codes: weight codes ``(K, N)``, int8 (``w_offset=0``) or uint8 storage of signed codes
      (``w_offset=128``, as in an 8-bit signed ``QArray.packed``).
    w_scale: float per-channel scales ``(1, N)`` (or ``(1, 1)``).
    w_offset: subtracted from ``w_codes`` to get the signed int8 code.
    out_dtype: float output dtype.
    config: tile sizes (``block_k`` = contraction rows per loop step).
    interpret: run in Pallas interpret mode (any platform).
    platform: lower for "gpu" (Triton) or "tpu" (Mosaic) instead of ``jax.default_backend()``,
      e.g. ahead-of-time with ``.lower(lowering_platforms=("cuda",))`` on a CPU host.
  """
  where = "w8a8_matmul"
  check_operands(x_q, x_scale, w_codes, w_scale, w_offset, where)
  config = config or _pallas.BlockConfig()
  (m, k), n = x_q.shape, w_codes.shape[1]
  bm, bn, bk = config.block_m, config.block_n, config.block_k
  splits, steps = _pallas.split_steps(_pallas.cdiv(k, bk), config.split_k)
  m_pad, n_pad, k_pad = _pallas.round_up(m, bm), _pallas.round_up(n, bn), splits * steps * bk
  operands = [
      _pallas.pad_to(x_q, (m_pad, k_pad)),
      # Padded K rows of the weight hold the offset, i.e. code 0 (x is zero there anyway).
      jnp.pad(w_codes, ((0, k_pad - k), (0, n_pad - n)), constant_values=w_offset),
      _pallas.pad_to(jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1)), (m_pad, 1)),
      _pallas.pad_to(jnp.broadcast_to(w_scale.astype(jnp.float32), (1, n)), (1, n_pad)),
  ]
  in_specs = [
      pl.BlockSpec((bm, k_pad), lambda i, j, s: (i, 0)),
      pl.BlockSpec((k_pad, bn), lambda i, j, s: (0, j)),
      pl.BlockSpec((bm, 1), lambda i, j, s: (i, 0)),
      pl.BlockSpec((1, bn), lambda i, j, s: (0, j)),
  ]
  out_dtype = jnp.dtype(out_dtype)
  if splits == 1:
    out_shape = jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype)
    out_spec = pl.BlockSpec((bm, bn), lambda i, j, s: (i, j))
  else:  # partial sums are scaled per split (scaling is linear) and added by XLA
    out_shape = jax.ShapeDtypeStruct((splits, m_pad, n_pad), jnp.float32)
    out_spec = pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j))
  grid = (m_pad // bm, n_pad // bn, splits)
  y = pl.pallas_call(
      functools.partial(_kernel, bk=bk, steps=steps, w_offset=w_offset),
      out_shape=out_shape,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_spec,
      interpret=interpret,
      compiler_params=None if interpret else _pallas.compiler_params(len(grid), config, platform),
      name="w8a8_matmul",
  )(*operands)
  if splits > 1:
    y = y.sum(axis=0)
  return y[:m, :n].astype(out_dtype)


def _kernel(x_ref, w_ref, xs_ref, ws_ref, o_ref, *, bk, steps, w_offset):
  bm, bn = o_ref.shape[-2:]
  first_step = pl.program_id(2) * steps

  def step(t, acc):
    k0 = pl.multiple_of((first_step + t) * bk, bk)
    w = w_ref[pl.ds(k0, bk), :]
    if w.dtype != jnp.int8:  # uint8 storage of signed codes
      w = (w.astype(jnp.int32) - w_offset).astype(jnp.int8)
    x = x_ref[:, pl.ds(k0, bk)]
    return acc + jnp.dot(x, w, preferred_element_type=jnp.int32)

  acc = lax.fori_loop(0, steps, step, jnp.zeros((bm, bn), jnp.int32))
  o_ref[...] = (acc.astype(jnp.float32) * xs_ref[...] * ws_ref[...]).astype(o_ref.dtype)


def check_operands(x_q, x_scale, w_codes, w_scale, w_offset, where: str) -> None:
  """Raises TypeError/ValueError naming the bad argument (shared with the XLA fallback)."""
  if x_q.dtype != jnp.int8:
    raise TypeError(f"{where}: x_q must be int8 (see quantize_rows), got dtype {x_q.dtype}")
  if w_codes.dtype not in (jnp.int8, jnp.uint8):
    raise TypeError(
        f"{where}: w_codes must be int8 (or uint8 storage with w_offset=128), got dtype "
        f"{w_codes.dtype}; quantize float weights first (QArray.from_codes)"
    )
  _pallas.check_rank(x_q, 2, "x_q", where)
  _pallas.check_rank(w_codes, 2, "w_codes", where)
  _pallas.check_k(x_q.shape[1], w_codes.shape[0], w_codes.shape, where)
  lo, hi = (-128, 127) if w_codes.dtype == jnp.int8 else (0, 255)
  if not isinstance(w_offset, int) or not (-128 <= lo - w_offset and hi - w_offset <= 127):
    raise ValueError(
        f"{where}: w_offset={w_offset!r} maps {w_codes.dtype} codes outside int8; use 0 for "
        "int8 codes, 128 for uint8 storage of signed codes"
    )
  m, n = x_q.shape[0], w_codes.shape[1]
  for name, value, allowed in (("x_scale", x_scale, {(m, 1), (1, 1)}),
                               ("w_scale", w_scale, {(1, n), (1, 1)})):
    if tuple(value.shape) not in allowed:
      raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, allowed {sorted(allowed)}")
    _pallas.check_float(value, name, where)
