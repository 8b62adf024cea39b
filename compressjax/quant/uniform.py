"""Uniform (affine) quantization with ranges from calibration, static or dynamic.

Symmetric signed codes use the narrow range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` with
``scale = absmax / (2^(b-1) - 1)`` (zero is exact and the grid is symmetric); symmetric unsigned
codes ``[0, 2^b - 1]`` with ``scale = max / (2^b - 1)``. Asymmetric codes use the full range of
``bits`` and an integer zero point; the range is widened to contain 0, so 0 is exact.

The range comes from ``calibration``: ``absmax``, ``minmax`` or ``percentile`` (of ``|x|`` when
symmetric, the ``100 - p`` and ``p`` percentiles when asymmetric). ``dynamic=True`` computes it
from the tensor at every call (weights, per-token activations); otherwise ``update`` accumulates
it over calibration batches in ``stats`` (running min/max, or an EMA with ``ema_decay``) and
``fake`` refuses stats that were never calibrated (see ``_calibration``).

``signed=None`` takes the sign from the init tensor (signed if it has negatives) and keeps it
as ``stats["signed"]`` (0/1); its integer form is then unsigned codes with a zero point, so code
ranges stay static. Ranges are taken over finite values only: a NaN/Inf example neither
contaminates the others' dynamic scale nor a calibrated range, and NaN inputs stay NaN.

Gradients: straight-through on ``round``, masked outside the range; the range itself is a
statistic and receives no gradient.
"""

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.quant import _calibration, _checks
from compressjax.quant._checks import check_granularity
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, round_ste

Array = jax.Array

CALIBRATIONS = ("absmax", "minmax", "percentile")
_EPS = 1e-12  # smallest scale: an all-zero range quantizes everything to code 0, never NaN


@dataclasses.dataclass(frozen=True, kw_only=True)
class Uniform(Quantizer):
  """Uniform quantizer; see the module docstring.

  Attributes:
    bits: 2..16.
    signed: signed codes (weights, pre-activations), unsigned (after ReLU), or None: signed
      if the init tensor has negatives.
    symmetric: zero point 0 (``True``) or an integer zero point from the min/max range.
    granularity: scale sharing; ``token`` needs ``dynamic=True``.
    calibration: ``"absmax"``, ``"minmax"`` or ``"percentile"``.
    percentile: the ``p`` of ``calibration="percentile"``, in (50, 100].
    dynamic: range from each tensor itself; ``False`` means calibrated ranges in ``stats``.
    ema_decay: static ranges as ``decay * old + (1 - decay) * batch``; ``None`` keeps the
      running min/max over all calibration batches.
  """

  bits: int = 8
  signed: bool | None = True
  symmetric: bool = True
  granularity: Granularity = PER_TENSOR
  calibration: str = "absmax"
  percentile: float = 99.99
  dynamic: bool = True
  ema_decay: float | None = None

  def validate(self) -> None:
    super().validate()
    name = type(self).__name__
    check_granularity(self, self.granularity, ("tensor", "channel", "group", "token"))
    _checks.check_signed(self, self.signed)
    if self.calibration not in CALIBRATIONS:
      raise ValueError(
          f"{name}: calibration={self.calibration!r} is not allowed; use one of {CALIBRATIONS}"
      )
    if not 50.0 < self.percentile <= 100.0:
      raise ValueError(f"{name}: percentile={self.percentile!r} is not allowed; use (50, 100]")
    if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"{name}: ema_decay={self.ema_decay!r} is not allowed; use [0, 1) or None")
    if self.granularity.kind == "token" and not self.dynamic:
      raise ValueError(
          f"{name}: granularity 'token' has batch-dependent ranges; it needs dynamic=True"
      )

  def init(self, x: Array) -> tuple[State, State]:
    _checks.check_operand(self, x, init=True)
    if self.symmetric:  # an asymmetric grid covers negative ranges whatever the code sign
      _checks.warn_if_clipped(self, x, self.signed)
    stats = {} if self.signed is not None else {"signed": _checks.signed_stat(x)}
    if self.dynamic:
      return {}, stats
    lo, _ = self._range(self.granularity.view(x))
    zeros = jnp.zeros_like(lo)
    return {}, {**stats, "lo": zeros, "hi": zeros, "count": jnp.zeros((), jnp.int32)}

  def update(self, x: Array, params: State, stats: State) -> State:
    del params
    if self.dynamic:
      return stats
    lo, hi = self._range(self.granularity.view(x))
    count = stats["count"]
    if self.ema_decay is None:
      lo = _calibration.running(stats["lo"], lo, count, jnp.minimum)
      hi = _calibration.running(stats["hi"], hi, count, jnp.maximum)
    else:
      combine = _calibration.ema(1.0 - self.ema_decay)
      lo = _calibration.running(stats["lo"], lo, count, combine)
      hi = _calibration.running(stats["hi"], hi, count, combine)
    return {**stats, "lo": lo, "hi": hi, "count": count + 1}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del params
    _checks.check_operand(self, x, init=False)
    centered, scale, _ = self._centered_codes(x, stats)
    y = centered * scale
    if not self.dynamic:
      y = _calibration.guard_calibrated(y, stats, type(self).__name__)
    return self.granularity.unview(y, x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del params
    if not self.dynamic:
      _calibration.require_calibrated(stats, type(self).__name__)
    centered, scale, zero = self._centered_codes(x, stats)
    codes = self.granularity.unview(centered + zero, x.shape)
    signed = _checks.signed_of(self, self.signed, stats)
    if isinstance(signed, bool):
      lo, hi = self._code_bounds(signed)
      return Codes(codes, scale, zero, lo, hi)
    shift = jnp.where(signed, 2.0 ** (self.bits - 1), 0.0)  # signed codes as unsigned ones
    return Codes(codes + shift, scale, zero + shift, 0, 2**self.bits - 1)

  def _code_bounds(self, signed: bool | Array) -> tuple[Array | int, Array | int]:
    """``(code_lo, code_hi)`` of the grid; arrays for a sign calibrated into the stats."""
    b = self.bits
    signed_hi = 2 ** (b - 1) - 1
    signed_lo = -signed_hi if self.symmetric else -(2 ** (b - 1))
    if isinstance(signed, bool):
      return (signed_lo, signed_hi) if signed else (0, 2**b - 1)
    return jnp.where(signed, signed_lo, 0.0), jnp.where(signed, signed_hi, 2.0**b - 1)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    q = self.quantize(x, params, stats)
    to_q = lambda a: self.granularity.to_qarray(a, x.shape)
    has_zero = not self.symmetric or self.signed is None
    return QArray.from_codes(
        q.codes.astype(jnp.int32),
        to_q(q.scale),
        to_q(jnp.broadcast_to(q.zero_point, jnp.shape(q.scale))) if has_zero else None,
        bits=self.bits,
        signed=q.lo < 0,
        group_size=self.granularity.group_size,
    )

  def _centered_codes(self, x: Array, stats: State) -> tuple[Array, Array, Array]:
    """``(codes - zero_point, scale, zero_point)`` on the view of ``x``; STE on the codes."""
    v = self.granularity.view(x.astype(jnp.float32))
    scale, zero, qlo, qhi = self._grid(v, stats)
    return round_ste(clip(v * _inverse(scale), qlo - zero, qhi - zero)), scale, zero

  def _range(self, v: Array) -> tuple[Array, Array]:
    """``(lo, hi)`` of one tensor's view under ``calibration`` (no gradient)."""
    g = self.granularity
    v = jax.lax.stop_gradient(v).astype(jnp.float32)
    if self.calibration == "absmax" or (self.calibration == "minmax" and self.symmetric):
      a = g.reduce(v, "absmax")
      return -a, a
    if self.calibration == "minmax":
      return g.reduce(v, "min"), g.reduce(v, "max")
    if self.symmetric:
      a = g.reduce(jnp.abs(v), "percentile", q=self.percentile)
      return -a, a
    return (
        g.reduce(v, "percentile", q=100.0 - self.percentile),
        g.reduce(v, "percentile", q=self.percentile),
    )

  def _grid(self, v: Array, stats: State) -> tuple[Array, Array, Array | int, Array | int]:
    """``(scale, zero_point, code_lo, code_hi)`` for the view ``v`` (no gradient)."""
    if self.dynamic:
      lo, hi = self._range(v)
    else:
      lo, hi = jax.lax.stop_gradient(stats["lo"]), jax.lax.stop_gradient(stats["hi"])
    qlo, qhi = self._code_bounds(_checks.signed_of(self, self.signed, stats))
    # range * (1 / levels), not range / levels: XLA rewrites a division by a constant into this
    # multiplication when it compiles one, so eager and jitted grids would differ by an ulp, and
    # round(lo / scale) (on a tie whenever lo == -hi) by a whole zero point.
    if self.symmetric:
      scale = jnp.maximum(jnp.maximum(-lo, hi) * (1.0 / qhi), _EPS)
      return scale, jnp.zeros_like(scale), qlo, qhi
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    scale = jnp.maximum((hi - lo) * (1.0 / (2**self.bits - 1)), _EPS)  # qhi - qlo, any sign
    return scale, qlo - jnp.round(lo * _inverse(scale)), qlo, qhi


def _inverse(scale: Array) -> Array:
  """``1 / scale``, to multiply by: XLA compiles ``v / broadcast(scale)`` as ``v * (1 / scale)``
  in some programs (a single eager op) and not in others (a fused jit), an ulp apart, so a
  quotient on a rounding tie (``lo / scale`` is -(2^b - 1) / 2 whenever ``lo == -hi``) would
  round to different codes in the fake-quant forward and in a compiled export."""
  return 1.0 / scale
