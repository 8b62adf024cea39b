"""F8Net fixed-point quantization (Jin et al., 2022): 8-bit words, power-of-two scales.

``x_q = clip(round(x * 2^FL), lo, hi) / 2^FL`` with ``[lo, hi] = [-127, 127]`` (signed) or
``[0, 255]`` (unsigned, after ReLU); straight-through round, gradient masked outside the clip.
The fractional length comes from the standard deviation:
``FL = clip(floor(log2(c / sigma)), 0, 8 - signed)``, ``c = 40`` signed / ``70`` unsigned.

Weights take ``sigma`` from the tensor at every call (per tensor or per output channel).
Activations keep the real-valued FL in ``stats["fl"]``, tracked by ``update`` as an EMA
(``momentum`` = 0.1 for the new batch, 0.9 for the old value; the first batch is taken as is),
and quantize with ``round(FL)``, as the authors do at evaluation; an uncalibrated activation
quantizer is refused like a static :class:`Uniform`.

Export: codes with scale ``2^-FL``.
"""

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.quant import _calibration
from compressjax.quant._checks import check_granularity, check_kind, resolve_signed
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, round_ste

Array = jax.Array

SIGMA_COEFF = {True: 40.0, False: 70.0}


def fractional_length(sigma: Array, signed: bool, bits: int = 8) -> Array:
  """F8Net's ``FL = clip(floor(log2(c / sigma)), 0, bits - signed)`` (float, integer-valued)."""
  fl = jnp.floor(jnp.log2(SIGMA_COEFF[signed] / sigma))
  return jnp.clip(fl, 0, bits - int(signed))


@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedPoint(Quantizer):
  """F8Net fixed-point quantizer; see the module docstring.

  Attributes:
    bits: word length; 8 only (the FL rule's constants are fitted to 8 bits).
    signed: ``[-127, 127]`` codes, or ``[0, 255]`` after ReLU; None: signed for weights,
      unsigned for activations.
    kind: ``"weight"`` (FL from each tensor) or ``"activation"`` (FL tracked in ``stats``).
    granularity: one FL per tensor or per channel (last axis).
    momentum: weight of the new batch in the activation FL's EMA.
  """

  bits: int = 8
  signed: bool | None = None
  kind: str = "weight"
  granularity: Granularity = PER_TENSOR
  momentum: float = 0.1

  def bit_range(self) -> tuple[int, int]:
    return 8, 8

  def validate(self) -> None:
    super().validate()
    check_kind(self, self.kind)
    check_granularity(self, self.granularity, ("tensor", "channel"))
    if not 0.0 < self.momentum <= 1.0:
      raise ValueError(f"FixedPoint: momentum={self.momentum!r} is not allowed; use (0, 1]")

  @property
  def is_signed(self) -> bool:
    return resolve_signed(self.signed, self.kind)

  def init(self, x: Array) -> tuple[State, State]:
    if self.kind == "weight":
      return {}, {}
    fl = jnp.zeros_like(self._fl_of(x))
    return {}, {"fl": fl, "count": jnp.zeros((), jnp.int32)}

  def update(self, x: Array, params: State, stats: State) -> State:
    del params
    if self.kind == "weight":
      return stats
    count = stats["count"]
    fl = _calibration.running(stats["fl"], self._fl_of(x), count, _calibration.ema(self.momentum))
    return {"fl": fl, "count": count + 1}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del params
    codes, scale = self._codes(x, stats)
    y = codes * scale
    if self.kind == "activation":
      y = _calibration.guard_calibrated(y, stats, type(self).__name__)
    return y.astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del params
    if self.kind == "activation":
      _calibration.require_calibrated(stats, type(self).__name__)
    codes, scale = self._codes(x, stats)
    hi = 2 ** (self.bits - 1) - 1 if self.is_signed else 2**self.bits - 1
    return Codes(codes, scale, 0.0, -hi if self.is_signed else 0, hi)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    del params
    if self.kind == "activation":
      _calibration.require_calibrated(stats, type(self).__name__)
    codes, scale = self._codes(x, stats)
    return QArray.from_codes(
        codes.astype(jnp.int32),
        self.granularity.to_qarray(scale, x.shape),
        bits=self.bits,
        signed=self.is_signed,
    )

  def _fl_of(self, x: Array) -> Array:
    sigma = self.granularity.reduce(jax.lax.stop_gradient(x).astype(jnp.float32), "std")
    return fractional_length(sigma, self.is_signed, self.bits)

  def _codes(self, x: Array, stats: State) -> tuple[Array, Array]:
    """``(codes, 2^-FL)``: STE codes in the clip range, masked outside it."""
    if self.kind == "weight":
      fl = self._fl_of(x)
    else:
      fl = jax.lax.stop_gradient(stats["fl"])
      fl = jnp.clip(jnp.round(fl), 0, self.bits - int(self.is_signed))
    hi = 2 ** (self.bits - 1) - 1 if self.is_signed else 2**self.bits - 1
    lo = -hi if self.is_signed else 0
    return round_ste(clip(x.astype(jnp.float32) * jnp.exp2(fl), lo, hi)), jnp.exp2(-fl)
