"""Small CNN for digit images (8x8, 28x28 or 32x32, any channel count)."""

from collections.abc import Sequence

import flax.linen as nn
import jax

from compressjax.models.layers import batch_norm


class CNN(nn.Module):
  """Stages of conv3x3 (``conv{i}``) - BatchNorm (``bn{i}``) - ReLU - 2x2 max-pool, then
  flatten, a ReLU Dense ``hidden`` and the classifier ``head``.

  On 8x8 inputs with the default widths the feature map goes 8x8x32 -> 4x4x64 -> 2x2x64.

  Attributes:
    widths: output channels of each conv stage (channel pruning may shrink them).
    hidden: width of the hidden Dense layer.
    num_classes: number of output logits.
  """

  widths: Sequence[int] = (32, 64)
  hidden: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, name=f"conv{i}")(x)
      x = nn.relu(batch_norm(train, f"bn{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    return nn.Dense(self.num_classes, name="head")(x)
