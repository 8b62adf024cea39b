"""Channel groups of the zoo models: which widths channel pruning may shrink, and which arrays
hold those channels.

A group is one width field entry; its channels are the outputs of ``producers`` (kernel axis -1
and bias), normalised by ``norms`` (BatchNorm scale/bias/mean/var) and read by ``consumers``
(kernel axis -2) or ``flat_consumers`` (a Dense after a flatten, whose rows interleave space and
channels). Channels tied across a residual add (ResNet stage widths, MobileNetV2 block outputs,
stems) are never grouped, so they are never pruned: only block-internal widths are.

- CNN: each conv width (``conv{i}``, scored by ``bn{i}``) and the ``hidden`` Dense (no BN).
- ResNet: each basic block's inner width (conv1 -> bn1 -> conv2), ``block_widths``.
- MobileNetV2: each expanded block's hidden width (expand -> depthwise -> project),
  ``hidden_widths``; the depthwise BN (the one feeding project) scores the channels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import flax.linen as nn

from compressjax.models import CNN, MobileNetV2, ResNet


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


def _cnn_groups(model: CNN) -> list[ChannelGroup]:
  groups = []
  n = len(model.widths)
  for i, width in enumerate(model.widths):
    nxt = (f"conv{i + 1}",) if i + 1 < n else ()
    groups.append(ChannelGroup(f"conv{i}", width, f"bn{i}", (f"conv{i}",), (f"bn{i}",), nxt,
                               () if nxt else ("hidden",)))
  groups.append(ChannelGroup("hidden", model.hidden, None, ("hidden",), (), ("head",)))
  return groups


def _cnn_thin(model: CNN, sizes: Mapping[str, int]) -> CNN:
  widths = tuple(sizes[f"conv{i}"] for i in range(len(model.widths)))
  return model.clone(widths=widths, hidden=sizes["hidden"])


def _resnet_groups(model: ResNet) -> list[ChannelGroup]:
  groups = []
  for s, inner in enumerate(model.inner_widths()):
    for b, width in enumerate(inner):
      p = f"stage{s + 1}/block{b}"
      groups.append(ChannelGroup(p, width, f"{p}/bn1", (f"{p}/conv1",), (f"{p}/bn1",),
                                 (f"{p}/conv2",)))
  return groups


def _resnet_thin(model: ResNet, sizes: Mapping[str, int]) -> ResNet:
  return model.clone(block_widths=tuple(sizes[g.name] for g in _resnet_groups(model)))


def _mobilenet_groups(model: MobileNetV2) -> list[ChannelGroup]:
  groups = []
  for i, spec in enumerate(model.block_specs()):
    if spec.expand:
      p = f"block{i}"
      groups.append(ChannelGroup(
          p, spec.hidden_width, f"{p}/depthwise/bn", (f"{p}/expand/conv", f"{p}/depthwise/conv"),
          (f"{p}/expand/bn", f"{p}/depthwise/bn"), (f"{p}/project/conv",)))
  return groups


def _mobilenet_thin(model: MobileNetV2, sizes: Mapping[str, int]) -> MobileNetV2:
  hidden = [sizes.get(f"block{i}", s.hidden_width) for i, s in enumerate(model.block_specs())]
  return model.clone(hidden_widths=tuple(hidden))


_HANDLERS: dict[type, tuple[Callable, Callable]] = {
    CNN: (_cnn_groups, _cnn_thin),
    ResNet: (_resnet_groups, _resnet_thin),
    MobileNetV2: (_mobilenet_groups, _mobilenet_thin),
}


def _handler(model: nn.Module) -> tuple[Callable, Callable]:
  for cls, handler in _HANDLERS.items():
    if isinstance(model, cls):
      return handler
  raise TypeError(f"channel pruning supports {', '.join(c.__name__ for c in _HANDLERS)}; "
                  f"got {type(model).__name__}")


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
  """The prunable channel groups of ``model``, in call order."""
  return _handler(model)[0](model)


def thin_model(model: nn.Module, sizes: Mapping[str, int]) -> nn.Module:
  """A module of the same class with each group's width set to ``sizes[group]``."""
  return _handler(model)[1](model, sizes)
