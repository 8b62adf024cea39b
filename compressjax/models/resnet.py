"""CIFAR-style ResNet (depth 6n+2, He et al. 2016) with basic blocks and projection shortcuts."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from compressjax.models.layers import ConvBN, batch_norm, check_widths


class BasicBlock(nn.Module):
  """conv1 3x3 - bn1 - ReLU - conv2 3x3 - bn2, plus the shortcut, then ReLU.

  The shortcut is the identity, or ``shortcut`` (1x1 ConvBN) when stride or width changes.

  Attributes:
    width: output channels (tied to the residual add, never pruned alone).
    inner_width: conv1's output channels (what channel pruning shrinks).
    strides: stride of conv1 and of the projection shortcut.
  """

  width: int
  inner_width: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = nn.Conv(self.inner_width, (3, 3), self.strides, "SAME", use_bias=False, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = nn.Conv(self.width, (3, 3), 1, "SAME", use_bias=False, name="conv2")(y)
    y = batch_norm(train, "bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.width:
      shortcut = ConvBN(self.width, (1, 1), self.strides, name="shortcut")(x, train)
    return nn.relu(y + shortcut)


class ResNetStage(nn.Module):
  """Blocks ``block0..`` of one width; the first block applies the stage's stride."""

  width: int
  inner_widths: Sequence[int]
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for b, inner in enumerate(self.inner_widths):
      x = BasicBlock(self.width, inner, self.strides if b == 0 else 1, name=f"block{b}")(x, train)
    return x


class ResNet(nn.Module):
  """CIFAR ResNet: ``stem`` (3x3 ConvBN + ReLU), ``stage1..stageK`` (stride 2 from stage2 on),
  global average pooling, ``head`` Dense. The defaults are ResNet-20 (0.27M parameters).

  Attributes:
    num_classes: number of output logits.
    stage_widths: output channels of each stage (tied across residual adds).
    blocks_per_stage: n in depth = 6n + 2 (for three stages).
    block_widths: inner width (conv1 output) of every block, stage-major, or None for the stage
      widths. Channel pruning shrinks these.
    stem_width: output channels of the stem conv.
  """

  num_classes: int = 10
  stage_widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 3
  block_widths: Sequence[int] | None = None
  stem_width: int = 16

  @nn.nowrap
  def inner_widths(self) -> tuple[tuple[int, ...], ...]:
    """Per stage, the inner width of each block (``block_widths`` resolved and validated)."""
    n = self.blocks_per_stage
    if not isinstance(n, int) or n < 1:
      raise ValueError(f"ResNet.blocks_per_stage must be a positive int; got {n!r}")
    if self.block_widths is None:
      return tuple((w,) * n for w in self.stage_widths)
    flat = check_widths("ResNet", "block_widths", self.block_widths, n * len(self.stage_widths))
    return tuple(flat[s * n : (s + 1) * n] for s in range(len(self.stage_widths)))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = ConvBN(self.stem_width, (3, 3), act=nn.relu, name="stem")(x, train)
    for s, (width, inner) in enumerate(zip(self.stage_widths, self.inner_widths())):
      x = ResNetStage(width, inner, 1 if s == 0 else 2, name=f"stage{s + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def resnet(depth: int, num_classes: int = 10, **kwargs) -> ResNet:
  """A three-stage CIFAR ResNet of the given depth (6n + 2, e.g. 20, 32, 56)."""
  if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
    raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...); got {depth!r}")
  if "blocks_per_stage" in kwargs:
    raise TypeError(f"resnet(depth={depth}) fixes blocks_per_stage; build ResNet(...) directly "
                    f"to set blocks_per_stage={kwargs['blocks_per_stage']!r}")
  return ResNet(num_classes=num_classes, blocks_per_stage=(depth - 2) // 6, **kwargs)


def resnet20(num_classes: int = 10, **kwargs) -> ResNet:
  """ResNet-20 for CIFAR: 3 stages of 16/32/64 channels, 3 basic blocks each."""
  return resnet(20, num_classes, **kwargs)
