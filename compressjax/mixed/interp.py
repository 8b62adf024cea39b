"""Bit-width interpolation shared by FracBits and its hardened per-channel form.

:func:`mix` evaluates a base quantizer at every integer bit-width in ``[lo, hi]`` (``0`` means
the operand is zeroed) and blends ``floor(bits)`` and ``floor(bits) + 1`` linearly; with
integer ``bits`` it is exactly the base quantizer at those bits, per tensor or per channel.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compressjax.qarray import QArray, code_range
from compressjax.quant.base import Codes, Quantizer

Array = jax.Array
State = dict[str, Array]


def mix(base: Quantizer, x: Array, params: State, stats: State, bits: Array, lo: int, hi: int) -> Array:
  """``base`` interpolated between ``floor(bits)`` and ``floor(bits) + 1`` bits (``bits`` in
  ``[lo, hi]``, a scalar or one value per last-axis channel of ``x``)."""
  f = jax.lax.stop_gradient(jnp.clip(jnp.floor(bits), lo, max(hi - 1, lo)))
  frac = bits - f
  below, above = jnp.zeros_like(x), jnp.zeros_like(x)
  for k in range(lo, hi + 1):
    q = jnp.zeros_like(x) if k == 0 else base.replace(bits=k).fake(x, params, stats)
    below = below + jnp.where(f == k, q, 0.0)
    above = above + jnp.where(f + 1 == k, q, 0.0)
  return below + frac * (above - below)


def check_levels(owner: str, base: Any, lo: int, hi: int) -> None:
  if not isinstance(base, Quantizer):
    raise TypeError(f"{owner}: base={base!r} must be a Quantizer (e.g. SAT, DoReFa, PACT)")
  qlo, qhi = base.bit_range()
  bad = [k for k in range(lo, hi + 1) if k != 0 and not qlo <= k <= qhi]
  if lo < 0 or bad:
    raise ValueError(
        f"{owner}: bits {lo}..{hi} are not allowed for {type(base).__name__}; use 0 (zero) or "
        f"{qlo}..{qhi}"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChannelBits:
  """Fixed integer bits per output channel (a hardened kernel-wise FracBits allocation).

  Attributes:
    base: the quantizer; its ``bits`` field is ignored.
    bits: one bit-width per output channel (last axis of the kernel).
  """

  base: Quantizer
  bits: tuple[int, ...]

  def __post_init__(self):
    if not self.bits or any(not isinstance(b, int) for b in self.bits):
      raise ValueError(f"ChannelBits: bits={self.bits!r} must be a non-empty tuple of ints")
    check_levels("ChannelBits", self.base, min(self.bits), max(self.bits))

  def init(self, x: Array) -> tuple[State, State]:
    if x.shape[-1] != len(self.bits):
      raise ValueError(
          f"ChannelBits has {len(self.bits)} bit-widths for a kernel with {x.shape[-1]} output "
          "channels"
      )
    return self.base.init(x)

  def update(self, x: Array, params: State, stats: State) -> State:
    return self.base.update(x, params, stats)

  def fake(self, x: Array, params: State, stats: State) -> Array:
    bits = jnp.asarray(self.bits, jnp.float32)
    return mix(self.base, x, params, stats, bits, min(self.bits), max(self.bits))

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    """Each channel's codes, scale and zero point from the base quantizer at its bits (a
    0-bit channel: code 0 at zero point 0); scales and zero points are per channel."""
    n = x.shape[-1]
    channel_bits = np.asarray(self.bits)
    codes, scale, zero = jnp.zeros(x.shape, jnp.float32), jnp.ones((n,)), jnp.zeros((n,))
    lo, hi = 0, 0
    for k in sorted(set(self.bits) - {0}):
      q = self.base.replace(bits=k).quantize(x, params, stats)
      on = jnp.asarray(channel_bits == k)
      codes = jnp.where(on, q.codes, codes)
      scale = jnp.where(on, self._per_channel(q.scale, n, "scale"), scale)
      zero = jnp.where(on, self._per_channel(q.zero_point, n, "zero point"), zero)
      lo, hi = min(lo, q.lo), max(hi, q.hi)
    return Codes(codes, scale, zero, lo, hi)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    """Codes in a container of ``max(bits)`` bits with per-channel scales; dequantizes to
    :meth:`fake` (each channel as the base quantizer at its own bits)."""
    q = self.quantize(x, params, stats)
    bits = max(self.bits)
    signed = q.lo < 0
    container_lo, container_hi = code_range(bits, signed)
    if q.lo < container_lo or q.hi > container_hi:
      raise ValueError(f"ChannelBits: {type(self.base).__name__} codes span {q.lo}..{q.hi}, "
                       f"wider than a {bits}-bit container")
    return QArray.from_codes(q.codes.astype(jnp.int32), q.scale, q.zero_point, bits=bits,
                             signed=signed)

  def _per_channel(self, a: Array | float, n: int, what: str) -> Array:
    a = jnp.asarray(a, jnp.float32)
    if a.size not in (1, n):
      raise ValueError(f"ChannelBits: the {type(self.base).__name__} {what} has shape "
                       f"{a.shape}; per-channel bits export only per-tensor or per-channel scales")
    return jnp.broadcast_to(a.reshape(-1), (n,))
