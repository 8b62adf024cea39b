"""Channel groups of the zoo models, registered with :mod:`compressjax.prune.channels`.

Channels tied across a residual add (ResNet stage widths, MobileNetV2 block outputs, stems) are
never grouped, so they are never pruned: only block-internal widths are.

- CNN: each conv width (``conv{i}``, scored by ``bn{i}``) and the ``hidden`` Dense (no BN).
- ResNet: each basic block's inner width (conv1 -> bn1 -> conv2), ``block_widths``.
- MobileNetV2: each expanded block's hidden width (expand -> depthwise -> project),
  ``hidden_widths``; the depthwise BN (the one feeding project) scores the channels.
"""

from collections.abc import Mapping

from compressjax.models.cnn import CNN
from compressjax.models.mobilenet_v2 import MobileNetV2
from compressjax.models.resnet import ResNet
from compressjax.prune.channels import ChannelGroup, register


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


register(CNN, _cnn_groups, _cnn_thin)
register(ResNet, _resnet_groups, _resnet_thin)
register(MobileNetV2, _mobilenet_groups, _mobilenet_thin)
