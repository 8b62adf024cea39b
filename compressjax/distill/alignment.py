"""Similarity of two layers' representations: kernel alignment (KA, as in CAT) and CKA.

Both compare B x B Gram matrices of per-example flattened features, so the two layers may have
any (different) channel counts and no adaptor is needed; both are invariant to scaling either
feature. KA is the uncentred form CAT's code uses; CKA (Kornblith et al. 2019) centres the Gram
matrices, which makes it invariant to adding a constant to the features as well.
"""

import jax
import jax.numpy as jnp

_TINY = 1e-30


def _flatten_pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
    raise ValueError(
        f"features must share the batch size on axis 0: got shapes {x.shape} (student) and "
        f"{y.shape} (teacher)")
  if x.shape[0] < 2:
    raise ValueError(f"kernel alignment needs a batch of at least 2 examples, got {x.shape[0]}")
  b = x.shape[0]
  return x.reshape(b, -1).astype(jnp.float32), y.reshape(b, -1).astype(jnp.float32)


def _gram_alignment(gx: jax.Array, gy: jax.Array) -> jax.Array:
  num = jnp.sum(gx * gy)
  den = jnp.sqrt(jnp.maximum(jnp.sum(gx * gx), _TINY)) * jnp.sqrt(jnp.maximum(jnp.sum(gy * gy),
                                                                               _TINY))
  return num / den


def kernel_alignment(x: jax.Array, y: jax.Array) -> jax.Array:
  """KA(X, Y) = <X X^T, Y Y^T>_F / (||X X^T||_F ||Y Y^T||_F), X and Y flattened per example."""
  x, y = _flatten_pair(x, y)
  return _gram_alignment(x @ x.T, y @ y.T)


def cka(x: jax.Array, y: jax.Array) -> jax.Array:
  """Linear CKA: kernel alignment of the centred Gram matrices H X X^T H, H Y Y^T H."""
  x, y = _flatten_pair(x, y)
  # H G H with G = X X^T equals the Gram matrix of the column-centred features.
  x = x - jnp.mean(x, axis=0, keepdims=True)
  y = y - jnp.mean(y, axis=0, keepdims=True)
  return _gram_alignment(x @ x.T, y @ y.T)


def ka_loss(student_feats: list[jax.Array] | tuple[jax.Array, ...],
            teacher_feats: list[jax.Array] | tuple[jax.Array, ...]) -> jax.Array:
  """CAT's distillation loss: -sum_l KA(student_l, teacher_l); the teacher is not differentiated."""
  if len(student_feats) != len(teacher_feats):
    raise ValueError(f"got {len(student_feats)} student features and {len(teacher_feats)} teacher "
                     "features; they are matched pairwise and must be as many")
  return -sum(kernel_alignment(s, jax.lax.stop_gradient(t))
              for s, t in zip(student_feats, teacher_feats))
