"""Multi-layer perceptron classifier (flattens its input)."""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """ReLU MLP: ``dense{i}`` hidden layers of the given widths, then ``head``.

  Attributes:
    features: width of each hidden Dense layer (channel pruning may shrink them).
    num_classes: number of output logits.
  """

  features: Sequence[int] = (256, 128)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or Dropout.
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.features):
      x = nn.relu(nn.Dense(width, name=f"dense{i}")(x))
    return nn.Dense(self.num_classes, name="head")(x)
