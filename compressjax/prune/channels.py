"""Channel groups: which widths of a model channel pruning may shrink, and which arrays hold
those channels.

A group is one width field entry; its channels are the outputs of ``producers`` (kernel axis -1
and bias), normalised by ``norms`` (BatchNorm scale/bias/mean/var) and read by ``consumers``
(kernel axis -2) or ``flat_consumers`` (a Dense after a flatten, whose rows interleave space and
channels). Channels tied across a residual add must never be grouped, so they are never pruned.

A model class takes part by registering two functions (:func:`register`): its groups, and a
thinner copy of the model given each group's new width. The zoo's classes register theirs in
:mod:`compressjax.models.channels`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
  """One prunable width; ``score_bn`` is the BatchNorm whose |gamma| ranks its channels."""

  name: str
  size: int
  score_bn: str | None
  producers: tuple[str, ...]
  norms: tuple[str, ...]
  consumers: tuple[str, ...] = ()
  flat_consumers: tuple[str, ...] = ()


GroupsFn = Callable[[nn.Module], list[ChannelGroup]]
ThinFn = Callable[[nn.Module, Mapping[str, int]], nn.Module]
_HANDLERS: dict[type, tuple[GroupsFn, ThinFn]] = {}


def register(cls: type, groups: GroupsFn, thin: ThinFn) -> None:
  """Lets channel pruning shrink instances of ``cls`` (and its subclasses).

  ``groups(model)`` lists the prunable groups in call order; ``thin(model, sizes)`` returns a
  module of the same class with each group's width set to ``sizes[group.name]``.
  """
  _HANDLERS[cls] = (groups, thin)


def _handler(model: nn.Module) -> tuple[GroupsFn, ThinFn]:
  for cls, handler in _HANDLERS.items():
    if isinstance(model, cls):
      return handler
  raise TypeError(f"channel pruning supports {', '.join(c.__name__ for c in _HANDLERS)}; "
                  f"got {type(model).__name__} (add it with compressjax.prune.channels.register)")


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
  """The prunable channel groups of ``model``, in call order."""
  return _handler(model)[0](model)


def thin_model(model: nn.Module, sizes: Mapping[str, int]) -> nn.Module:
  """A module of the same class with each group's width set to ``sizes[group]``."""
  return _handler(model)[1](model, sizes)
