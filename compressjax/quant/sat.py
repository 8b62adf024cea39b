"""SAT: scale-adjusted training (Jin, Yang & Liao, 2020).

Weights: DoReFa's clamp ``w~ = tanh(w) / (2 max|tanh w|) + 1/2``, the grid
``q = (min(floor(2^b w~), 2^b - 1) + c) / 2^b`` with ``c = 0`` ("modified": a lower-bit grid is
the higher-bit grid with its low bits dropped) or ``c = 1/2`` ("centered"), ``Q = 2q - 1`` in
[-1, 1], then the variance rule ``Q* = Q / (sqrt(n_out) * std(Q))`` with ``std`` under
stop_gradient, so that ``Var[Q*] = 1 / n_out``. ``n_out`` is ``fan_out`` if given, else derived
from a Flax kernel ``(*spatial, in, out)``: ``out * prod(spatial)`` (``out_features`` for a dense
``(in, out)`` kernel, ``out_channels * k_h * k_w`` for a 2-D conv); set ``fan_out`` for other
layouts (e.g. DenseGeneral). Floor has a straight-through gradient.

Activations (``kind="activation"``): PACT, whose autodiff is SAT's calibrated gradient; its
clip level starts from the init tensor's 99.9th percentile (see :mod:`compressjax.quant.pact`).

Zero point (``zero_point``): ``"grid"`` is the paper's ``2^(b-1) - c``, so ``Q = 2q - 1``.
``"mean"`` is the mean of the tensor's codes (under stop_gradient, like ``std``): ``Q`` is the
codes minus their mean, times ``2^(1-b)``, so the quantized weights have mean exactly 0 while
the codes (hence the modified grid's nesting) stay the same. Why: with ``c = 0`` the codes of
small weights (``w~`` near 1/2) are ``2^(b-1) - 1`` and ``2^(b-1)``, i.e. ``Q`` in
``{-2^(1-b), 0}`` for most weights: a sign plus a mean shift as large as it, which sums
coherently over non-negative (post-ReLU) inputs and adds the same feature to every output
channel. With every layer of the digits CNN at 2 or 3 bits, ``"grid"`` stays at chance
(init and after QAT) and ``"mean"`` trains (``experiments/results/collapse.md``). With
``c = 1/2`` the codes' mean is already near the grid's ``2^(b-1) - 1/2``.

Export: unsigned codes ``0..2^b-1``, the (float) zero point above and scale
``2^(1-b) / (sqrt(n_out) std(Q))`` (the rescale folded into the scale); the integer paths fold
the zero point in exactly, so served == fake-quant.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from compressjax.quant import _checks
from compressjax.quant._checks import check_granularity, check_kind
from compressjax.quant.base import Codes, Quantizer, State
from compressjax.quant.dorefa import tanh_to_unit
from compressjax.quant.granularity import PER_TENSOR, Granularity
from compressjax.quant.pact import PACT
from compressjax.qarray import QArray
from compressjax.quant.ste import floor_ste

Array = jax.Array

GRIDS = ("modified", "centered")
ZERO_POINTS = ("grid", "mean")


def fan_out(shape: tuple[int, ...]) -> int:
  """SAT's ``n_out`` of a Flax kernel ``(*spatial, in, out)``: ``out * prod(spatial)``."""
  if len(shape) < 2:
    return max(math.prod(shape), 1)
  return shape[-1] * math.prod(shape[:-2])


@dataclasses.dataclass(frozen=True, kw_only=True)
class SAT(Quantizer):
  """SAT quantizer; see the module docstring.

  Attributes:
    bits: 2..16.
    kind: ``"weight"`` (the rescaled DoReFa grid) or ``"activation"`` (PACT).
    grid: weights: ``"modified"`` or ``"centered"``.
    granularity: weights: what ``max|tanh w|`` is taken over (SAT: per tensor).
    fan_out: weights: ``n_out`` of the variance rule; None derives it from the kernel shape.
    zero_point: weights: ``"grid"`` (the paper's) or ``"mean"`` (the codes' mean).
    alpha_init: activations: PACT's initial clip level; None: from the init tensor.
    signed: activations: PACT's ``signed`` (False, True, or None: decided at init).
  """

  bits: int = 8
  kind: str = "weight"
  grid: str = "modified"
  granularity: Granularity = PER_TENSOR
  fan_out: int | None = None
  alpha_init: float | None = None
  signed: bool | None = False
  zero_point: str = "grid"

  def validate(self) -> None:
    super().validate()
    check_kind(self, self.kind)
    check_granularity(self, self.granularity, ("tensor", "channel", "group"))
    if self.grid not in GRIDS:
      raise ValueError(f"SAT: grid={self.grid!r} is not allowed; use one of {GRIDS}")
    if self.zero_point not in ZERO_POINTS:
      raise ValueError(f"SAT: zero_point={self.zero_point!r} is not allowed; use one of "
                       f"{ZERO_POINTS}")
    if self.fan_out is not None and (not isinstance(self.fan_out, int) or self.fan_out <= 0):
      raise ValueError(f"SAT: fan_out={self.fan_out!r} is not allowed; use a positive int or None")
    self._pact.validate()

  @property
  def _pact(self) -> PACT:
    return PACT(bits=self.bits, alpha_init=self.alpha_init, signed=self.signed)

  def init(self, x: Array) -> tuple[State, State]:
    if self.kind == "activation":
      return self._pact.init(x)
    _checks.check_operand(self, x, init=True)
    return {}, {}

  def fake(self, x: Array, params: State, stats: State) -> Array:
    if self.kind == "activation":
      return self._pact.fake(x, params, stats)
    centered, scale, _ = self._centered_codes(x)
    return self.granularity.unview(centered * scale, x.shape).astype(x.dtype)

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    if self.kind == "activation":
      return self._pact.quantize(x, params, stats)
    centered, scale, zero = self._centered_codes(x)
    codes = self.granularity.unview(centered + zero, x.shape)
    return Codes(codes, scale, zero, 0, 2**self.bits - 1)

  def export(self, x: Array, params: State, stats: State) -> QArray:
    if self.kind == "activation":
      return self._pact.export(x, params, stats)
    centered, scale, zero = self._centered_codes(x)
    codes = self.granularity.unview(centered + zero, x.shape).astype(jnp.int32)
    return QArray.from_codes(
        codes,
        jnp.reshape(scale, (1, 1)),
        jnp.full((1, 1), zero, jnp.float32),
        bits=self.bits,
        signed=False,
    )

  def _centered_codes(self, x: Array) -> tuple[Array, Array, float]:
    """``(codes - zero_point, scale, zero_point)`` on the view of ``x``; STE on the codes."""
    levels = 2**self.bits
    v = self.granularity.view(x.astype(jnp.float32))
    f = floor_ste(levels * tanh_to_unit(v, self.granularity))
    # Only w~ = 1 (and w~ a rounding error below 0) leave 0..2^b-1; the rest keep f's gradient.
    codes = jnp.where(f < 0, 0.0, jnp.where(f > levels - 1, levels - 1, f))
    zero = levels / 2 - (0.5 if self.grid == "centered" else 0.0)
    if self.zero_point == "mean":  # the tensor's codes, mean-free (see the module docstring)
      zero = jax.lax.stop_gradient(jnp.mean(codes))
    step = 2.0 / levels  # Q = (codes - zero) * step, in [-1, 1] for the grid's zero point
    std = jax.lax.stop_gradient(jnp.std((codes - zero) * step))
    std = jnp.where(std > 0, std, 1.0)  # a constant tensor has no spread to normalise
    n_out = self.fan_out or fan_out(x.shape)
    return codes - zero, step / (math.sqrt(n_out) * std), zero
