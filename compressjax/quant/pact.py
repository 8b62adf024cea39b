"""PACT: activations clipped to a learnable level alpha (Choi et al., 2018).

``y_q = alpha * q_k_STE(clip(x, 0, alpha) / alpha)``, computed as
``round_STE(clip(x, 0, alpha) * (2^k - 1) / alpha) * alpha / (2^k - 1)``. Autodiff of this form
gives SAT's "calibrated gradient": ``d y_q / d alpha = q(x/alpha) - x/alpha`` for
``0 <= x < alpha`` and 1 for ``x >= alpha``; ``d y_q / d x`` is 1 on ``(0, alpha)`` and 0
elsewhere. alpha starts at 10.0 for dense layers and 8.0 for convs in the authors' code (set
``alpha_init``) and should get no weight decay.

Export: unsigned codes ``0..2^k-1`` with scale ``alpha / (2^k - 1)``.
"""

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.quant.base import Codes, Quantizer, State
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, round_ste

Array = jax.Array

ALPHA_INIT_DENSE = 10.0
ALPHA_INIT_CONV = 8.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PACT(Quantizer):
  """PACT activation quantizer; ``params = {"alpha": scalar}``.

  Attributes:
    bits: 1..16.
    alpha_init: initial clip level (10.0 dense, 8.0 conv in the authors' code).
  """

  bits: int = 8
  alpha_init: float = ALPHA_INIT_DENSE

  def bit_range(self) -> tuple[int, int]:
    return 1, 16

  def validate(self) -> None:
    super().validate()
    if not self.alpha_init > 0:
      raise ValueError(f"PACT: alpha_init={self.alpha_init!r} is not allowed; use a positive float")

  def init(self, x: Array) -> tuple[State, State]:
    del x
    return {"alpha": jnp.asarray(self.alpha_init, jnp.float32)}, {}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del stats
    codes, scale = self._codes(x, params)
    return (codes * scale).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del stats
    codes, scale = self._codes(x, params)
    return Codes(codes, scale, 0.0, 0, 2**self.bits - 1)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    del stats
    codes, scale = self._codes(x, params)
    return QArray.from_codes(
        codes.astype(jnp.int32), jnp.reshape(scale, (1, 1)), bits=self.bits, signed=False
    )

  def _codes(self, x: Array, params: State) -> tuple[Array, Array]:
    """``(codes, scale)``: STE codes in ``0..2^k-1`` and ``alpha / (2^k - 1)``."""
    n = 2**self.bits - 1
    alpha = params["alpha"]
    y = clip(x.astype(jnp.float32), 0.0, alpha)
    return round_ste(y * (n / alpha)), alpha / n
