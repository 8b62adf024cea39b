"""Hinge GAN losses over discriminator logits (pix2pix, CAT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Discriminator hinge loss: mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))."""
  return jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
  """Generator hinge loss: -mean(D(fake))."""
  return -jnp.mean(fake_logits)
