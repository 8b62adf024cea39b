"""The Transform protocol: what a rule applies to an operand of a site, and ``chain``.

A transform rewrites one operand of a site (its weight, or an activation) before the op runs:
``init(x) -> (params, stats)``, ``update(x, params, stats) -> stats`` and ``fake(x, params,
stats) -> x``, all pure; ``params`` are learnable (trained by the user's optimizer), ``stats``
are not (running ranges). State is any pytree. A transform reports its bit-width as ``bits``
(None when it does not quantize). Weights are given as ``(*contracting axes, N)`` (see
:func:`compressjax.core.compress.weight_view`), activations as the op sees them.

``chain(a, b)`` applies ``a`` then ``b``; its state is the tuple of its members' states (as in
optax's ``chain``), and its integer export is the last member's, run on the earlier members'
output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array


@runtime_checkable
class Transform(Protocol):
  """Rewrites an operand of a site; state is split into learnable params and stats."""

  def init(self, x: Array) -> tuple[Any, Any]: ...

  def update(self, x: Array, params: Any, stats: Any) -> Any: ...

  def fake(self, x: Array, params: Any, stats: Any) -> Array: ...


def bits_of(transform: Any) -> int | None:
  """The bit-width a transform quantizes to (None: it does not quantize, or is not fixed)."""
  return getattr(transform, "bits", None)


@dataclasses.dataclass(frozen=True)
class Chain:
  """Applies transforms in order; each sees the previous one's output."""

  transforms: tuple[Any, ...]

  @property
  def bits(self) -> int | None:
    return bits_of(self.transforms[-1])

  def init(self, x: Array) -> tuple[tuple, tuple]:
    params, stats = [], []
    for t in self.transforms:
      p, s = t.init(x)
      params.append(p)
      stats.append(s)
      x = t.fake(x, p, s)
    return tuple(params), tuple(stats)

  def update(self, x: Array, params: tuple, stats: tuple) -> tuple:
    new = []
    for t, p, s in zip(self.transforms, params, stats):
      s = t.update(x, p, s)
      new.append(s)
      x = t.fake(x, p, s)
    return tuple(new)

  def fake(self, x: Array, params: tuple, stats: tuple) -> Array:
    for t, p, s in zip(self.transforms, params, stats):
      x = t.fake(x, p, s)
    return x

  def export(self, x: Array, params: tuple, stats: tuple):
    """Integer export: earlier members run in float, the last one writes the QArray."""
    *head, last = self.transforms
    for t, p, s in zip(head, params, stats):
      x = t.fake(x, p, s)
    if not hasattr(last, "export"):
      raise TypeError(f"the last transform of the chain ({last!r}) has no integer export")
    return last.export(x, params[-1], stats[-1])

  def quantize(self, x: Array, params: tuple, stats: tuple):
    """Integer form of the output (the last member's), for integer serving paths."""
    *head, last = self.transforms
    for t, p, s in zip(head, params, stats):
      x = t.fake(x, p, s)
    return last.quantize(x, params[-1], stats[-1])


def chain(*transforms: Any) -> Chain:
  """Composes transforms left to right (e.g. ``chain(mask, quantizer)``)."""
  if not transforms:
    raise ValueError("chain needs at least one transform")
  for i, t in enumerate(transforms):
    if not isinstance(t, Transform):
      raise TypeError(
          f"chain argument {i} ({t!r}) is not a transform: it needs init/update/fake methods")
  return Chain(tuple(transforms))
