"""MobileNetV2 (Sandler et al. 2018): inverted residual blocks with linear bottlenecks."""

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from compressjax.models.layers import ConvBN, check_widths

# (expand ratio t, output channels c, repeats n, first stride s), as in Table 2 of the paper.
_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a width to the nearest multiple of ``divisor`` without dropping more than 10%."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Resolved shape of one inverted residual block."""

  in_width: int
  hidden_width: int
  out_width: int
  strides: int
  expand: bool  # False for expand ratio 1: no 1x1 expansion, hidden width == in_width.

  @property
  def residual(self) -> bool:
    return self.strides == 1 and self.in_width == self.out_width


class InvertedResidual(nn.Module):
  """``expand`` 1x1 ConvBN+ReLU6 (if any), ``depthwise`` 3x3 ConvBN+ReLU6, ``project`` 1x1
  ConvBN (linear); adds the input when stride is 1 and widths match."""

  spec: BlockSpec

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    s = self.spec
    y = x
    if s.expand:
      y = ConvBN(s.hidden_width, (1, 1), act=nn.relu6, name="expand")(y, train)
    y = ConvBN(
        s.hidden_width, (3, 3), s.strides, groups=s.hidden_width, act=nn.relu6, name="depthwise"
    )(y, train)
    y = ConvBN(s.out_width, (1, 1), name="project")(y, train)
    return x + y if s.residual else y


class MobileNetV2(nn.Module):
  """MobileNetV2 classifier: ``stem`` 3x3 ConvBN+ReLU6, ``block0..block16``, ``last`` 1x1
  ConvBN+ReLU6, global average pooling, ``head`` Dense.

  Attributes:
    num_classes: number of output logits.
    width_multiplier: scales every width, rounded to multiples of 8 as in the paper.
    small_input: for 32x32 inputs (CIFAR) the stem and the second stage use stride 1, so the
      network downsamples 8x instead of 32x.
    stem_width: stem output channels; None means ``make_divisible(32 * width_multiplier)``.
    hidden_widths: expanded (depthwise) width of each of the 17 blocks; None means
      input width * expand ratio. Block 0 has no expansion, so its entry must equal stem_width.
      Channel pruning shrinks these.
    last_width: channels of the last 1x1 conv; None means 1280 * max(1, width_multiplier).
  """

  num_classes: int = 10
  width_multiplier: float = 1.0
  small_input: bool = False
  stem_width: int | None = None
  hidden_widths: Sequence[int] | None = None
  last_width: int | None = None

  @nn.nowrap
  def resolved_stem_width(self) -> int:
    return self.stem_width or make_divisible(32 * self.width_multiplier)

  @nn.nowrap
  def resolved_last_width(self) -> int:
    return self.last_width or make_divisible(1280 * max(1.0, self.width_multiplier))

  @nn.nowrap
  def block_specs(self) -> tuple[BlockSpec, ...]:
    """Shapes of all 17 blocks (widths resolved and validated)."""
    if not self.width_multiplier > 0:
      raise ValueError(f"MobileNetV2.width_multiplier must be > 0; got {self.width_multiplier}")
    num_blocks = sum(n for _, _, n, _ in _CONFIG)
    hidden = None
    if self.hidden_widths is not None:
      hidden = check_widths("MobileNetV2", "hidden_widths", self.hidden_widths, num_blocks)
    specs, in_width = [], self.resolved_stem_width()
    for stage, (t, c, n, s) in enumerate(_CONFIG):
      out_width = make_divisible(c * self.width_multiplier)
      if self.small_input and stage == 1:
        s = 1
      for b in range(n):
        i = len(specs)
        width = in_width * t if hidden is None else hidden[i]
        if t == 1 and width != in_width:
          raise ValueError(
              f"MobileNetV2.hidden_widths[{i}] = {width}: block{i} has no expansion, so its "
              f"hidden width must equal its input width {in_width} (the stem width)"
          )
        specs.append(BlockSpec(in_width, width, out_width, s if b == 0 else 1, t != 1))
        in_width = out_width
    return tuple(specs)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    stem_strides = 1 if self.small_input else 2
    x = ConvBN(self.resolved_stem_width(), (3, 3), stem_strides, act=nn.relu6, name="stem")(
        x, train
    )
    for i, spec in enumerate(self.block_specs()):
      x = InvertedResidual(spec, name=f"block{i}")(x, train)
    x = ConvBN(self.resolved_last_width(), (1, 1), act=nn.relu6, name="last")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)
