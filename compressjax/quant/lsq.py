"""LSQ: learned step size (Esser et al., 2020) and LSQ+: learned offset (Bhalgat et al., 2020).

LSQ: ``v^ = round_STE(clip(v / s, -Q_N, Q_P)) * s`` with signed codes (``Q_N = 2^(b-1)``,
``Q_P = 2^(b-1) - 1``) or unsigned ones (``Q_N = 0``, ``Q_P = 2^b - 1``). The step ``s`` is
learned with its gradient scaled by ``g = 1 / sqrt(N * Q_P)``, ``N`` = elements sharing one
step (weights) or features per sample sharing it (activations: the leading axis is the batch).
Autodiff gives ``d v^ / d s = -v/s + round(v/s)`` inside the range and ``-Q_N`` / ``Q_P`` when
clipped, times ``g``.

Init (the paper's rule) ``s0 = 2 mean|v| / sqrt(Q_P)`` over the finite values of the tensor seen
at init (``init_from`` runs the float model's real batch through it), per tensor or per
channel/group; ``s0 = 1`` where that is 0 or undefined (an all-zero or all-NaN tensor).
Activations with ``signed=None`` are signed if the init tensor has negatives; the decision is
``stats["signed"]`` (0/1) and fixes ``Q_N``, ``Q_P`` from then on.

LSQ+: ``v^ = round_STE(clip((v - beta) / s, -Q_N, Q_P)) * s + beta`` with a learnable offset
``beta`` (same gradient scale), for asymmetric activations such as swish/GELU outputs; init from
the finite range, ``s0 = (max - min) / (Q_P + Q_N)``, ``beta0 = min + Q_N * s0``.

Export: codes with scale ``s`` (LSQ+: float zero point ``-beta / s``). A sign decided at init is
written as unsigned codes ``0..2^b-1`` with zero point ``Q_N``, so code ranges are static.
"""

import dataclasses
import jax
import jax.numpy as jnp

from compressjax.quant import _checks
from compressjax.quant._checks import check_granularity, check_kind
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.qarray import QArray
from compressjax.quant.ste import clip, fake_quant, grad_scale

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSQ(Quantizer):
  """Learned-step-size quantizer; ``params = {"step": s}`` (scalar or per channel/group).

  Attributes:
    bits: 2..16.
    signed: signed or unsigned codes; None: signed for weights, and for activations signed
      exactly when the init tensor has negatives (kept as ``stats["signed"]``).
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
    _checks.check_signed(self, self.signed)

  @property
  def is_signed(self) -> bool | None:
    """The configured sign (weights default to signed); None: decided at init."""
    return _checks.static_signed(self.signed, self.kind)

  def bounds(self, stats: State) -> tuple[Array | int, Array | int]:
    """``(Q_N, Q_P)``: ints for a configured sign, arrays for one calibrated into ``stats``."""
    signed = _checks.signed_of(self, self.is_signed, stats)
    if isinstance(signed, bool):
      return (2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1) if signed else (0, 2**self.bits - 1)
    return (jnp.where(signed, 2.0 ** (self.bits - 1), 0.0),
            jnp.where(signed, 2.0 ** (self.bits - 1) - 1, 2.0**self.bits - 1))

  @property
  def q_n(self) -> int:
    """``Q_N`` of a configured sign (``bounds(stats)`` for a calibrated one)."""
    return self.bounds({})[0]

  @property
  def q_p(self) -> int:
    """``Q_P`` of a configured sign (``bounds(stats)`` for a calibrated one)."""
    return self.bounds({})[1]

  def grad_scale_of(self, shape: tuple[int, ...], q_p: Array | int | None = None) -> Array | float:
    """``g = 1 / sqrt(N * Q_P)`` for a tensor of ``shape`` (``Q_P`` of the configured sign)."""
    n = self.granularity.per_stat(shape)
    if self.kind == "activation" and len(shape) >= 2:
      n = max(n // max(shape[0], 1), 1)
    return (n * (self.q_p if q_p is None else q_p)) ** -0.5

  def init(self, x: Array) -> tuple[State, State]:
    stats = self._init_stats(x)
    _, q_p = self.bounds(stats)
    v = self.granularity.view(x.astype(jnp.float32))
    s0 = 2.0 * self.granularity.reduce(jax.lax.stop_gradient(v), "mean_abs") / jnp.sqrt(q_p)
    return {"step": _nonzero(s0)}, stats

  def _init_stats(self, x: Array, *, clips_negatives: bool = True) -> State:
    """Checks ``x``; the calibrated sign for ``signed=None``; warns about clipped negatives."""
    _checks.check_operand(self, x, init=True)
    if self.kind == "activation" and clips_negatives:
      _checks.warn_if_clipped(self, x, self.is_signed)
    return {"signed": _checks.signed_stat(x)} if self.is_signed is None else {}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    v, s, beta, (q_n, q_p), g = self._prepare(x, params, stats)
    if beta is None:
      y = fake_quant(v, s, -q_n, q_p, g)
    else:
      y = fake_quant(v - beta, s, -q_n, q_p, g) + beta
    return self.granularity.unview(y, x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    _checks.check_finite_state(self, params)
    codes, step, zero, (q_n, q_p) = self._codes(x, params, stats)
    zero = zero if "offset" in params else 0.0
    if isinstance(q_n, int):
      return Codes(codes, step, zero, -q_n, q_p)
    return Codes(codes + q_n, step, zero + q_n, 0, 2**self.bits - 1)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    q = self.quantize(x, params, stats)
    to_q = lambda a: self.granularity.to_qarray(a, x.shape)
    has_zero = "offset" in params or self.is_signed is None
    return QArray.from_codes(
        self.granularity.unview(q.codes, x.shape).astype(jnp.int32),
        to_q(q.scale),
        to_q(jnp.broadcast_to(q.zero_point, jnp.shape(q.scale))) if has_zero else None,
        bits=self.bits,
        signed=q.lo < 0,
        group_size=self.granularity.group_size,
    )

  def _prepare(self, x: Array, params: State, stats: State):
    """``(view of x, step, offset or None, (Q_N, Q_P), g)``: the offset carries the gradient
    scale ``g``, :func:`fake_quant` applies it to the step's gradient."""
    _checks.check_operand(self, x, init=False)
    q_n, q_p = self.bounds(stats)
    g = self.grad_scale_of(x.shape, q_p)
    beta = grad_scale(params["offset"], g) if "offset" in params else None
    return self.granularity.view(x.astype(jnp.float32)), params["step"], beta, (q_n, q_p), g

  def _codes(self, x: Array, params: State, stats: State):
    """``(codes, step, zero_point, (Q_N, Q_P))`` on the view of ``x``.

    ``v^ = (codes - zero) * s`` with ``zero = -beta / s`` is LSQ+'s ``codes * s + beta``, written
    as the export computes it.
    """
    v, s, beta, (q_n, q_p), _ = self._prepare(x, params, stats)
    beta = jnp.zeros_like(s) if beta is None else beta
    return jnp.round(clip((v - beta) / s, -q_n, q_p)), s, -beta / s, (q_n, q_p)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LSQPlus(LSQ):
  """LSQ+ (learned step and offset); ``params = {"step": s, "offset": beta}``.

  Defaults to unsigned activations: the offset shifts the grid onto negative values, so the
  sign needs no calibration.
  """

  kind: str = "activation"
  signed: bool | None = False

  def init(self, x: Array) -> tuple[State, State]:
    stats = self._init_stats(x, clips_negatives=False)
    q_n, q_p = self.bounds(stats)
    v = self.granularity.view(jax.lax.stop_gradient(x).astype(jnp.float32))
    lo, hi = self.granularity.reduce(v, "min"), self.granularity.reduce(v, "max")
    s0 = _nonzero((hi - lo) / (q_p + q_n))
    return {"step": s0, "offset": lo + q_n * s0}, stats


def _nonzero(s: Array) -> Array:
  """A step of 1 where the init tensor gave 0 or NaN (it has no scale to learn from)."""
  return jnp.where(jnp.isfinite(s) & (s > 0), s, 1.0)
