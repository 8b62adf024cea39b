"""Building blocks shared by the classifiers: BatchNorm with the zoo's settings, Conv+BN(+act).

Only standard Linen layers are used, so compression code can intercept them by module path.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(train: bool, name: str) -> nn.BatchNorm:
  """BatchNorm with batch statistics in training and running averages in evaluation."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
  )


class ConvBN(nn.Module):
  """Bias-free convolution ("conv") followed by BatchNorm ("bn") and an optional activation.

  ``groups`` is the conv's feature_group_count (``groups == in_channels`` is depthwise).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int = 1
  groups: int = 1
  act: Callable[[jax.Array], jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(
        self.features,
        tuple(self.kernel_size),
        strides=self.strides,
        padding="SAME",
        feature_group_count=self.groups,
        use_bias=False,
        name="conv",
    )(x)
    x = batch_norm(train, "bn")(x)
    return x if self.act is None else self.act(x)


def check_widths(
    owner: str, field: str, widths: Sequence[int], expected_len: int
) -> tuple[int, ...]:
  """Validates a per-layer width list (length and positivity); returns it as a tuple."""
  widths = tuple(widths)
  if len(widths) != expected_len:
    raise ValueError(
        f"{owner}.{field} has {len(widths)} entries {widths}; "
        f"expected {expected_len} (one per block)"
    )
  bad = [w for w in widths if not isinstance(w, int) or w < 1]
  if bad:
    raise ValueError(f"{owner}.{field} must hold positive ints; got {widths}")
  return widths
