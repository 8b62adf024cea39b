"""PACT: activations clipped to a learnable level alpha (Choi et al., 2018).

``y_q = alpha * q_k_STE(clip(x, 0, alpha) / alpha)``, computed as
``round_STE(clip(x, 0, alpha) * (2^k - 1) / alpha) * alpha / (2^k - 1)``. Autodiff of this form
gives SAT's "calibrated gradient": ``d y_q / d alpha = q(x/alpha) - x/alpha`` for
``0 <= x < alpha`` and 1 for ``x >= alpha``; ``d y_q / d x`` is 1 on ``(0, alpha)`` and 0
elsewhere. alpha should get no weight decay.

Init: ``alpha0`` is the 99.9th percentile of ``max(x, 0)`` (signed: of ``|x|``) over the finite
values of the tensor seen at init (``init_from`` runs the float model's real batch through it),
so the clip starts where the activations are instead of at a constant that collapses low-bit
grids (the authors' 10.0 dense / 8.0 conv put every ReLU output of magnitude ~1 in code 0 at 2
bits). It falls back to 1.0 when that percentile is 0 or there is no finite value; a float
``alpha_init`` keeps the fixed start.

Signed inputs (``signed=True``, or ``None`` deciding at init, see ``stats["signed"]``): the clip
is ``[-alpha, alpha]`` with the narrow symmetric grid ``-(2^(k-1) - 1)..2^(k-1) - 1``.

Export: unsigned codes ``0..2^k-1`` with scale ``alpha / (2^k - 1)``; signed codes with scale
``alpha / (2^(k-1) - 1)``; a sign decided at init is written as unsigned codes with zero point
``2^(k-1)`` or 0, so code ranges are static.
"""

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.quant import _checks
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, round_ste

Array = jax.Array

ALPHA_PERCENTILE = 99.9
ALPHA_FALLBACK = 1.0  # alpha0 when the init tensor has no positive finite spread


def alpha_from_data(x: Array, signed: bool | Array) -> Array:
  """PACT's data init: the 99.9th percentile of ``max(x, 0)`` (signed: ``|x|``), finite only."""
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  x = jnp.where(jnp.isfinite(x), x, jnp.nan)  # dropped by the reduction, even -inf
  a = PER_TENSOR.reduce(jnp.where(signed, jnp.abs(x), jnp.maximum(x, 0.0)), "percentile",
                        q=ALPHA_PERCENTILE)
  return jnp.where(a > 0, a, ALPHA_FALLBACK)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PACT(Quantizer):
  """PACT activation quantizer; ``params = {"alpha": scalar}``, ``stats = {"signed": 0/1}``
  when ``signed=None``.

  Attributes:
    bits: 1..16 (signed: 2..16).
    alpha_init: None: from the init tensor (see the module docstring); a positive float: fixed.
    signed: False (after ReLU, the paper), True (clip to ``[-alpha, alpha]``) or None: signed
      if the init tensor has negatives (1-bit PACT is always unsigned).
  """

  bits: int = 8
  alpha_init: float | None = None
  signed: bool | None = False

  def bit_range(self) -> tuple[int, int]:
    return 1, 16

  def validate(self) -> None:
    super().validate()
    if self.alpha_init is not None and not (
        isinstance(self.alpha_init, (int, float)) and self.alpha_init > 0):
      raise ValueError(
          f"PACT: alpha_init={self.alpha_init!r} is not allowed; use a positive float or None "
          "(from data)")
    _checks.check_signed(self, self.signed)
    if self.signed is True and self.bits < 2:
      raise ValueError(f"PACT: bits={self.bits} with signed=True is not allowed; use bits >= 2")

  @property
  def _static_signed(self) -> bool | None:
    return False if self.bits == 1 else self.signed

  def init(self, x: Array) -> tuple[State, State]:
    _checks.check_operand(self, x, init=True)
    static = self._static_signed
    stats = {} if static is not None else {"signed": _checks.signed_stat(x)}
    _checks.warn_if_clipped(self, x, static)
    signed = _checks.signed_of(self, static, stats)
    alpha = (alpha_from_data(x, signed) if self.alpha_init is None
             else jnp.asarray(self.alpha_init, jnp.float32))
    return {"alpha": alpha}, stats

  def fake(self, x: Array, params: State, stats: State) -> Array:
    codes, scale, _ = self._codes(x, params, stats)
    return (codes * scale).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    _checks.check_finite_state(self, params)
    codes, scale, signed = self._codes(x, params, stats)
    n = 2**self.bits - 1
    if isinstance(signed, bool):
      half = 2 ** (self.bits - 1) - 1
      return Codes(codes, scale, 0.0, -half, half) if signed else Codes(codes, scale, 0.0, 0, n)
    zero = jnp.where(signed, 2.0 ** (self.bits - 1), 0.0)
    return Codes(codes + zero, scale, zero, 0, n)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    q = self.quantize(x, params, stats)
    calibrated_sign = not isinstance(q.zero_point, float)
    zero = jnp.reshape(q.zero_point, (1, 1)) if calibrated_sign else None
    return QArray.from_codes(q.codes.astype(jnp.int32), jnp.reshape(q.scale, (1, 1)), zero,
                             bits=self.bits, signed=q.lo < 0)

  def _codes(self, x: Array, params: State, stats: State) -> tuple[Array, Array, bool | Array]:
    """``(codes, scale, signed)``: STE codes and ``alpha / levels``; gradient through alpha."""
    _checks.check_operand(self, x, init=False)
    signed = _checks.signed_of(self, self._static_signed, stats)
    alpha = params["alpha"]
    if signed is False:
      n, lo = 2**self.bits - 1, 0.0
    elif signed is True:
      n, lo = 2 ** (self.bits - 1) - 1, -alpha
    else:
      n = jnp.where(signed, 2.0 ** (self.bits - 1) - 1, 2.0**self.bits - 1)
      lo = jnp.where(signed, -alpha, 0.0)
    y = clip(x.astype(jnp.float32), lo, alpha)
    return round_ste(y * (n / alpha)), alpha / n, signed
