"""PatchGAN discriminator (pix2pix); its hinge losses are in :mod:`compressjax.distill.hinge`.

The discriminator is conditional: it sees the input image concatenated with a real or generated
target and returns one logit per overlapping patch. 4x4 convs with padding 1 as in pix2pix:
``n_layers`` stride-2 convs (widths ndf * 2^i, capped at 8 * ndf), one stride-1 conv, then a
stride-1 conv to a single channel. Instance norms (no batch statistics to carry) after every conv
but the first and the last; LeakyReLU(0.2).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_kernel_init = nn.initializers.normal(0.02)


class PatchDiscriminator(nn.Module):
  """Conditional PatchGAN: (condition, image) -> (B, h, w, 1) patch logits."""
  ndf: int = 16
  n_layers: int = 2

  @nn.compact
  def __call__(self, condition: jax.Array, image: jax.Array, train: bool = False) -> jax.Array:
    del train
    if condition.shape[:3] != image.shape[:3]:
      raise ValueError(f"condition {condition.shape} and image {image.shape} must share (B, H, W)")
    x = jnp.concatenate([condition, image], axis=-1)
    for i in range(self.n_layers + 1):
      stride = 2 if i < self.n_layers else 1
      x = nn.Conv(self.ndf * min(2**i, 8), (4, 4), strides=(stride, stride),
                  padding=((1, 1), (1, 1)), kernel_init=_kernel_init, name=f"conv_{i}")(x)
      if i > 0:
        x = nn.InstanceNorm(name=f"norm_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    return nn.Conv(1, (4, 4), padding=((1, 1), (1, 1)), kernel_init=_kernel_init, name="logits")(x)
