"""DoReFa-Net quantizers (Zhou et al., 2016) for weights and activations.

Weights, ``k > 1``: ``w~ = tanh(w) / (2 max|tanh(w)|) + 1/2`` in [0, 1], ``w_q = 2 q_k(w~) - 1``
with ``q_k(u) = round((2^k - 1) u) / (2^k - 1)``; the max is differentiated through, as in the
authors' code. Weights, ``k = 1``: ``sign(w) * E`` with ``E = mean|w|`` under stop_gradient and
an identity gradient (sign(0) = +1, so there are two levels). Activations: ``q_k(clip(x, 0, 1))``
with the gradient masked outside [0, 1]. ``granularity`` (weights only) chooses what the max and
``E`` are taken over: DoReFa uses one per tensor.

Activations keep DoReFa's fixed [0, 1] range, with no calibrated scale: the paper quantizes the
output of a bounded activation, so the range is part of the method, not a statistic of the
data. For activations of unknown scale use PACT (the ``dorefa_pact`` recipe): its clip level
starts from the init batch's statistics and is learned.

Export: weights ``k > 1`` have codes ``i = round((2^k - 1) w~)`` in ``0..2^k-1`` with scale
``2 / (2^k - 1)`` and zero point ``(2^k - 1) / 2``; ``k = 1`` codes ``{0, 1}`` with scale ``2E``
and zero point ``1/2``; activations codes ``0..2^k-1`` with scale ``1 / (2^k - 1)``.
"""

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.quant import _checks
from compressjax.quant._checks import check_granularity, check_kind
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, round_ste, sign_ste

Array = jax.Array

_EPS = 1e-12  # floor of max|tanh w| and E, so an all-zero tensor never divides by zero


def tanh_to_unit(v: Array, granularity: Granularity) -> Array:
  """DoReFa's weight clamp ``tanh(v) / (2 max|tanh(v)|) + 1/2`` in [0, 1] (max per granularity)."""
  t = jnp.tanh(v)
  return t / (2.0 * jnp.maximum(granularity.reduce(t, "absmax"), _EPS)) + 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoReFa(Quantizer):
  """DoReFa quantizer; see the module docstring.

  Attributes:
    bits: 1..16.
    kind: ``"weight"`` or ``"activation"``.
    granularity: weights only: what ``max|tanh w|`` (k > 1) and ``E`` (k = 1) are taken over.
  """

  bits: int = 8
  kind: str = "weight"
  granularity: Granularity = PER_TENSOR

  def bit_range(self) -> tuple[int, int]:
    return 1, 16

  def validate(self) -> None:
    super().validate()
    check_kind(self, self.kind)
    # Activations are clipped to the fixed range [0, 1]: nothing to take per channel.
    allowed = ("tensor",) if self.kind == "activation" else ("tensor", "channel", "group")
    check_granularity(self, self.granularity, allowed)

  def init(self, x: Array) -> tuple[State, State]:
    _checks.check_operand(self, x, init=True)
    return {}, {}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del params, stats
    _checks.check_operand(self, x, init=False)
    centered, scale, _ = self._centered_codes(x)
    return self.granularity.unview(centered * scale, x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del params, stats
    centered, scale, zero = self._centered_codes(x)
    codes = self.granularity.unview(centered + zero, x.shape)
    return Codes(codes, scale, zero, 0, 2**self.bits - 1)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    del params, stats
    centered, scale, zero = self._centered_codes(x)
    codes = self.granularity.unview(centered + zero, x.shape).astype(jnp.int32)
    return QArray.from_codes(
        codes,
        self.granularity.to_qarray(scale, x.shape),
        None if self.kind == "activation" else jnp.full((1, 1), zero, jnp.float32),
        bits=self.bits,
        signed=False,
        # Only 1-bit scales (2E) are per group; for k > 1 the clamp is folded into the codes.
        group_size=self.granularity.group_size if self.bits == 1 else None,
    )

  def _centered_codes(self, x: Array) -> tuple[Array, Array, float]:
    """``(codes - zero_point, scale, zero_point)`` on the view of ``x``; STE on the codes."""
    v = self.granularity.view(x.astype(jnp.float32))
    n = 2**self.bits - 1
    if self.kind == "activation":
      return round_ste(clip(v, 0.0, 1.0) * n), jnp.float32(1.0 / n), 0.0
    if self.bits == 1:
      e = jax.lax.stop_gradient(jnp.maximum(self.granularity.reduce(v, "mean_abs"), _EPS))
      return 0.5 * sign_ste(v / e), 2.0 * e, 0.5
    return round_ste(tanh_to_unit(v, self.granularity) * n) - n / 2, jnp.float32(2.0 / n), n / 2
