"""LSQ: learned step size (Esser et al., 2020) and LSQ+: learned offset (Bhalgat et al., 2020).

LSQ: ``v^ = round_STE(clip(v / s, -Q_N, Q_P)) * s`` with signed weights (``Q_N = 2^(b-1)``,
``Q_P = 2^(b-1) - 1``) or unsigned activations (``Q_N = 0``, ``Q_P = 2^b - 1``). The step ``s``
is learned with its gradient scaled by ``g = 1 / sqrt(N * Q_P)``, ``N`` = elements sharing one
step (weights) or features per sample sharing it (activations: the leading axis is the batch).
Autodiff gives ``d v^ / d s = -v/s + round(v/s)`` inside the range and ``-Q_N`` / ``Q_P`` when
clipped, times ``g``. Init ``s0 = 2 mean|v| / sqrt(Q_P)``, per tensor or per channel/group.

LSQ+: ``v^ = round_STE(clip((v - beta) / s, -Q_N, Q_P)) * s + beta`` with a learnable offset
``beta`` (same gradient scale), for asymmetric activations such as swish/GELU outputs; init from
the range, ``s0 = (max - min) / (Q_P + Q_N)``, ``beta0 = min + Q_N * s0``.

Export: codes with scale ``s`` (LSQ+: float zero point ``-beta / s``). Both inits fall back to
``s0 = 1`` on an all-zero tensor; init from real data (a calibration batch) where you can.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from compressjax.quant._checks import check_granularity, check_kind, resolve_signed
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, grad_scale, round_ste

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSQ(Quantizer):
  """Learned-step-size quantizer; ``params = {"step": s}`` (scalar or per channel/group).

  Attributes:
    bits: 2..16.
    signed: signed codes or unsigned (activations after ReLU); None: signed for weights,
      unsigned for activations, as in LSQ.
    kind: ``"weight"`` or ``"activation"``: the default sign and ``N`` of the gradient scale.
    granularity: one step per tensor, per channel (last axis) or per group of ``K`` rows.
  """

  bits: int = 8
  signed: bool | None = None
  kind: str = "weight"
  granularity: Granularity = PER_TENSOR

  def validate(self) -> None:
    super().validate()
    check_kind(self, self.kind)
    check_granularity(self, self.granularity, ("tensor", "channel", "group"))

  @property
  def is_signed(self) -> bool:
    return resolve_signed(self.signed, self.kind)

  @property
  def q_n(self) -> int:
    return 2 ** (self.bits - 1) if self.is_signed else 0

  @property
  def q_p(self) -> int:
    return 2 ** (self.bits - 1) - 1 if self.is_signed else 2**self.bits - 1

  def grad_scale_of(self, shape: tuple[int, ...]) -> float:
    """``g = 1 / sqrt(N * Q_P)`` for a tensor of ``shape``."""
    n = self.granularity.per_stat(shape)
    if self.kind == "activation" and len(shape) >= 2:
      n = max(n // shape[0], 1)
    return 1.0 / math.sqrt(n * self.q_p)

  def init(self, x: Array) -> tuple[State, State]:
    v = self.granularity.view(x.astype(jnp.float32))
    s0 = 2.0 * self.granularity.reduce(v, "mean_abs") / math.sqrt(self.q_p)
    return {"step": _nonzero(s0)}, {}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    del stats
    codes, step, zero = self._codes(x, params)
    return self.granularity.unview((codes - zero) * step, x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    del stats
    codes, step, zero = self._codes(x, params)
    return Codes(codes, step, zero if "offset" in params else 0.0, -self.q_n, self.q_p)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    del stats
    codes, step, zero = self._codes(x, params)
    to_q = lambda a: self.granularity.to_qarray(a, x.shape)
    return QArray.from_codes(
        self.granularity.unview(codes, x.shape).astype(jnp.int32),
        to_q(step),
        to_q(zero) if "offset" in params else None,
        bits=self.bits,
        signed=self.is_signed,
        group_size=self.granularity.group_size,
    )

  def _codes(self, x: Array, params: State) -> tuple[Array, Array, Array]:
    """``(codes, step, zero_point)`` on the view of ``x``.

    Codes carry the STE; step and offset carry the gradient scale. ``v^ = (codes - zero) * s``
    with ``zero = -beta / s`` is LSQ+'s ``codes * s + beta``, written as the export computes it.
    """
    g = self.grad_scale_of(x.shape)
    s = grad_scale(params["step"], g)
    beta = grad_scale(params["offset"], g) if "offset" in params else jnp.zeros_like(s)
    v = self.granularity.view(x.astype(jnp.float32))
    return round_ste(clip((v - beta) / s, -self.q_n, self.q_p)), s, -beta / s


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSQPlus(LSQ):
  """LSQ+ (learned step and offset); ``params = {"step": s, "offset": beta}``.

  Defaults to (unsigned) activations: the offset shifts the grid onto negative values.
  """

  kind: str = "activation"

  def init(self, x: Array) -> tuple[State, State]:
    v = self.granularity.view(x.astype(jnp.float32))
    lo, hi = self.granularity.reduce(v, "min"), self.granularity.reduce(v, "max")
    s0 = _nonzero((hi - lo) / (self.q_p + self.q_n))
    return {"step": s0, "offset": lo + self.q_n * s0}, {}


def _nonzero(s: Array) -> Array:
  """A step of 1 where the init tensor gave 0 (an all-zero tensor has no scale to learn from)."""
  return jnp.where(s > 0, s, 1.0)
