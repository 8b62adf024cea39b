"""Plain-XLA fallbacks: what the dispatcher runs on CPU and where a kernel would be slower."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.kernels import w8a8, weight_only
from compressjax.qarray import QArray

Array = jax.Array


def weight_only_xla(x: Array, w: QArray, *, out_dtype=None) -> Array:
  """Dequantize to ``x.dtype``, then one dot with f32 accumulation (any bit-width)."""
  weight_only.check_operands(x, w, "weight_only_xla")
  wd = w.dequantize(x.dtype).reshape(w.k, w.n)
  return jnp.dot(x, wd, preferred_element_type=jnp.float32).astype(out_dtype or x.dtype)


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
