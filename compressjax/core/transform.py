"""The Transform protocol: what a rule applies at a site, and ``chain`` to compose them.

A transform rewrites one operand of a site (its kernel, or its input) before the layer's own op
runs. It is the :class:`~compressjax.quant.base.Quantizer` interface: ``init(x) -> (params,
stats)``, ``update(x, params, stats) -> stats`` and ``fake(x, params, stats) -> x``; a quantizer
is a transform, and so are masks and bit-width learners. ``chain(a, b)`` applies ``a`` then
``b``; each member's state keys get the member's index as prefix (``"0_step"``, ``"1_mask"``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array
State = dict[str, Array]


@runtime_checkable
class Transform(Protocol):
  """Rewrites an operand of a site; state is split into learnable params and stats."""

  def init(self, x: Array) -> tuple[State, State]: ...

  def update(self, x: Array, params: State, stats: State) -> State: ...

  def fake(self, x: Array, params: State, stats: State) -> Array: ...


def _split(state: State, i: int) -> State:
  prefix = f"{i}_"
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _join(states: list[State]) -> State:
  return {f"{i}_{k}": v for i, s in enumerate(states) for k, v in s.items()}


@dataclasses.dataclass(frozen=True)
class Chain:
  """Applies transforms in order; each sees the previous one's output."""

  transforms: tuple[Any, ...]

  def init(self, x: Array) -> tuple[State, State]:
    params, stats = [], []
    for t in self.transforms:
      p, s = t.init(x)
      params.append(p)
      stats.append(s)
      x = t.fake(x, p, s)
    return _join(params), _join(stats)

  def update(self, x: Array, params: State, stats: State) -> State:
    new = []
    for i, t in enumerate(self.transforms):
      p, s = _split(params, i), _split(stats, i)
      s = t.update(x, p, s)
      new.append(s)
      x = t.fake(x, p, s)
    return _join(new)

  def fake(self, x: Array, params: State, stats: State) -> Array:
    for i, t in enumerate(self.transforms):
      x = t.fake(x, _split(params, i), _split(stats, i))
    return x

  def export(self, x: Array, params: State, stats: State):
    """Integer export: earlier members run in float, the last one writes the QArray."""
    *head, last = self.transforms
    for i, t in enumerate(head):
      x = t.fake(x, _split(params, i), _split(stats, i))
    if not hasattr(last, "export"):
      raise TypeError(f"the last transform of the chain ({last!r}) has no integer export")
    n = len(head)
    return last.export(x, _split(params, n), _split(stats, n))


def chain(*transforms: Any) -> Chain:
  """Composes transforms left to right (e.g. ``chain(mask, quantizer)``)."""
  for i, t in enumerate(transforms):
    if not isinstance(t, Transform):
      raise TypeError(
          f"chain argument {i} ({t!r}) is not a transform: it needs init/update/fake methods"
      )
  return Chain(tuple(transforms))
