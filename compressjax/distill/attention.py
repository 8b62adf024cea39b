"""Attention transfer (Zagoruyko & Komodakis 2017): match spatial attention maps.

The attention map of an NHWC feature is the channel mean of its squared activations, flattened
and L2-normalised per example, so student and teacher may have different channel counts but must
share the spatial size.
"""

import jax
import jax.numpy as jnp


def attention_map(feat: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H*W): l2-normalised mean_c feat^2."""
  if feat.ndim != 4:
    raise ValueError(f"attention_map expects NHWC features, got shape {feat.shape}")
  a = jnp.mean(feat.astype(jnp.float32) ** 2, axis=-1).reshape(feat.shape[0], -1)
  return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def attention_transfer(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """mean over batch and positions of (a_s - a_t)^2 (the authors' loss, before their beta)."""
  if student_feat.shape[:3] != teacher_feat.shape[:3]:
    raise ValueError(f"student {student_feat.shape} and teacher {teacher_feat.shape} features "
                     "must share batch and spatial size (B, H, W)")
  a_t = jax.lax.stop_gradient(attention_map(teacher_feat))
  return jnp.mean((attention_map(student_feat) - a_t) ** 2)
