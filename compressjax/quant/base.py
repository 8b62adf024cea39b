"""The Quantizer interface: small frozen configs with pure methods over (x, params, stats).

A quantizer never owns arrays. ``init`` makes its state from the first tensor it sees, split
into ``params`` (learnable: step sizes, clip levels; trained by the same optimizer) and
``stats`` (not learnable: running ranges, fractional lengths; updated by ``update`` while the
``quant_stats`` collection is mutable, i.e. during training or calibration). ``fake`` is the
differentiable fake-quantization used in training; ``export`` writes the same numbers as a
:class:`QArray`, so that ``export(...).dequantize() == fake(...)`` up to float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax

from compressjax.qarray import QArray

Array = jax.Array
State = dict[str, Array]


class Codes(NamedTuple):
  """The integer form of a quantized tensor: ``fake == (codes - zero_point) * scale``.

  ``codes`` are integer-valued floats (straight-through gradients) in ``[lo, hi]``; ``scale``
  and ``zero_point`` broadcast onto them. Integer serving paths run on this form.
  """

  codes: Array
  scale: Array
  zero_point: Array | float
  lo: int
  hi: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantizer:
  """Base class. Subclasses are frozen keyword-only dataclasses (hashable, jit-static)."""

  bits: int = 8

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Checks the configuration; raises ValueError naming the field and the allowed values."""
    lo, hi = self.bit_range()
    if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not lo <= self.bits <= hi:
      raise ValueError(
          f"{type(self).__name__}: bits={self.bits!r} is not allowed; use an integer in {lo}..{hi}"
      )

  def bit_range(self) -> tuple[int, int]:
    """Allowed bit-widths of this method (inclusive)."""
    return 2, 16

  def init(self, x: Array) -> tuple[State, State]:
    """Returns ``(params, stats)`` for a tensor like ``x`` (its first value, at model init)."""
    return {}, {}

  def update(self, x: Array, params: State, stats: State) -> State:
    """New ``stats`` after seeing ``x`` (running ranges, EMA); identity by default."""
    del x, params
    return stats

  def fake(self, x: Array, params: State, stats: State) -> Array:
    """Fake-quantized ``x``, differentiable through straight-through estimators."""
    raise NotImplementedError

  def quantize(self, x: Array, params: State, stats: State) -> Codes:
    """The integer form of ``fake(x, ...)`` (see :class:`Codes`), for integer serving."""
    raise NotImplementedError(f"{type(self).__name__} has no integer form")

  def export(self, x: Array, params: State, stats: State) -> QArray:
    """``x`` as integer codes with scales; ``dequantize()`` equals ``fake(x, ...)``."""
    raise NotImplementedError(f"{type(self).__name__} has no integer export")

  def replace(self, **changes: Any) -> Quantizer:
    return dataclasses.replace(self, **changes)
