"""One group's share of a weight-only matmul, shared by the GPU and TPU kernels.

For codes ``u`` with storage offset ``o``, zero point ``z`` and scale ``s`` of one group ``g``:
``x_g @ ((u - o - z) * s) = s * (x_g @ (u - o) - rowsum(x_g) * z)``. The right-hand side applies
``s`` and ``z`` to the ``(bm, bn)`` result instead of the ``(group, bn)`` weight tile, which is
cheaper whenever ``bm < group`` (decode shapes) and keeps the dot operand an exact small integer.
For ``bm >= group`` they are applied to the tile instead, in the activation dtype (f32 with
``wide``, for TPUs without bf16 VPU arithmetic).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from compressjax.kernels._codes import codes_to_float

Array = jax.Array


def scale_on_acc(block_m: int, group: int) -> bool:
  """Whether one group's scale and zero go on the accumulator (True) or the weight tile."""
  return block_m < group


def group_dot(x: Array, u: Array, *, bits: int, offset: int, scale: Array | None,
              zero: Array | None, on_acc: bool, wide: bool = False) -> Array:
  """f32 ``(bm, bn)``: ``x (bm, rows) @ dequantize(u (rows, bn))`` for one group.

  ``scale`` / ``zero`` are this group's ``(1, bn)`` (or ``(1, 1)``) rows, or None when the
  caller applies them after the K loop (per-channel weights). With ``on_acc=False`` they may
  also be ``(rows, bn)`` tiles covering several groups.
  """
  if on_acc:
    d = jnp.dot(x, codes_to_float(u, bits, offset, x.dtype, wide=wide),
                preferred_element_type=jnp.float32)
    if zero is not None:
      d = d - jnp.sum(x.astype(jnp.float32), axis=1, keepdims=True) * zero
    return d if scale is None else d * scale
  w = codes_to_float(u, bits, offset, jnp.float32 if wide else x.dtype)
  if zero is not None:
    w = w - zero.astype(w.dtype)
  if scale is not None:
    w = w * scale.astype(w.dtype)
  return jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
