"""Plain-XLA fallbacks: what the dispatcher runs on CPU and where a kernel would be slower.

The weight-only fallback is written so XLA can fuse the dequantization into its GEMM (XLA:GPU's
Triton GEMM fusion takes elementwise/broadcast producers of a dot operand): the codes come out of
the packed bytes plane by plane with shifts (elementwise on ``(per, P, N)``, no concatenate, no
slice of K), scales broadcast per group, and ``x`` viewed as ``(M, per, P)`` contracts with both
plane and row axes in one ``dot_general``. Whether a given XLA version fuses it is checked on the
device by ``benchmarks/matmul_device.py`` (``xla_fused`` in its JSON).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.kernels import w8a8, weight_only
from compressjax.qarray import QArray, codes_per_byte

Array = jax.Array


def weight_only_xla(x: Array, w: QArray, *, out_dtype=None) -> Array:
  """``x @ dequantize(w)`` with the weight dequantized to ``x.dtype`` inside the dot's operand
  (any bit-width) and f32 accumulation."""
  weight_only.check_operands(x, w, "weight_only_xla")
  per, plane = codes_per_byte(w.bits), w.packed.shape[0]
  offset = 2 ** (w.bits - 1) if w.signed else 0
  planes = w.packed[None]
  if per > 1:
    shifts = (jnp.arange(per, dtype=w.packed.dtype) * w.bits)[:, None, None]
    planes = (planes >> shifts) & jnp.asarray(2**w.bits - 1, w.packed.dtype)
  wd = _apply_params(planes.astype(x.dtype) - jnp.asarray(offset, x.dtype), w, per, plane)
  xp = _pad_k(x, per * plane).reshape(x.shape[0], per, plane)
  y = lax.dot_general(xp, wd.astype(x.dtype), (((1, 2), (0, 1)), ((), ())),
                      preferred_element_type=jnp.float32)
  return y.astype(out_dtype or x.dtype)


def _apply_params(codes: Array, w: QArray, per: int, plane: int) -> Array:
  """``(codes - zero) * scale`` on ``(per, P, N)`` planes, group rows broadcast."""
  for name in ("zero_point", "scale"):
    a = getattr(w, name)
    if a is None:
      continue
    a = a.astype(codes.dtype)
    if a.shape[0] > 1:  # grouped: (K / g, N) -> (per, P / g, g, N) broadcast over the group
      g = w.group_size
      a = _pad_k(a.T, per * plane // g).T.reshape(per, plane // g, 1, a.shape[1])
      a = jnp.broadcast_to(a, (per, plane // g, g, a.shape[-1])).reshape(per, plane, -1)
    codes = codes - a if name == "zero_point" else codes * a
  return codes


def _pad_k(a: Array, size: int) -> Array:
  """Zero-pads the last axis to ``size`` (K rows of the last plane beyond ``w.k``)."""
  pad = size - a.shape[-1]
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]) if pad else a


def w8a8_xla(
    x_q: Array, x_scale: Array, w_codes: Array, w_scale: Array, *, w_offset: int = 0,
    out_dtype=jnp.float32,
) -> Array:
  """``lax.dot_general`` on int8 operands with an int32 result, then both scales."""
  w8a8.check_operands(x_q, x_scale, w_codes, w_scale, w_offset, "w8a8_xla")
  if w_codes.dtype != jnp.int8:
    w_codes = (w_codes.astype(jnp.int16) - w_offset).astype(jnp.int8)
  acc = lax.dot_general(x_q, w_codes, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  return (acc.astype(jnp.float32) * x_scale * w_scale).astype(out_dtype)
