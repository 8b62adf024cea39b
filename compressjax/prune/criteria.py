"""Ready-made pruners: magnitude, random, saliency (unstructured), block and N:M.

Each returns an ``optax.GradientTransformation`` to chain after an optimizer; see ``pruner``.
Common keyword arguments: ``layers`` (rules), ``skip_first_last``, ``order`` (kernel call order).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from compressjax.prune.block_pattern import Block
from compressjax.prune.nm_pattern import NM
from compressjax.prune.pruner import pruner
from compressjax.prune.ranking import Unstructured
from compressjax.prune.schedules import Schedule
from compressjax.prune.selection import Rule

SCORES = ("magnitude", "saliency")


def magnitude_score(w: jax.Array, g: jax.Array, noise: jax.Array | None) -> jax.Array:
  """|w|."""
  del g, noise
  return jnp.abs(w)


def saliency_score(w: jax.Array, g: jax.Array, noise: jax.Array | None) -> jax.Array:
  """|w * g|, first-order estimate of the loss change from removing w (g: the update seen)."""
  del noise
  return jnp.abs(w * g)


def random_score(w: jax.Array, g: jax.Array, noise: jax.Array | None) -> jax.Array:
  """Uniform noise: the random-pruning baseline."""
  del w, g
  return noise


def _score_fn(score: str):
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
  return magnitude_score if score == "magnitude" else saliency_score


def magnitude(sparsity: float, schedule: Schedule | None = None, *, scope: str = "layer",
              allocation: str = "uniform", layers: Sequence[Rule] | None = None,
              skip_first_last: bool = True,
              order: Sequence[str] | None = None) -> optax.GradientTransformation:
  """Magnitude pruning; ``scope='global'`` uses one threshold across all selected layers."""
  return pruner(Unstructured(sparsity, scope, allocation), magnitude_score, schedule,
                layers=layers, skip_first_last=skip_first_last, order=order)


def random(sparsity: float, key: jax.Array, schedule: Schedule | None = None, *,
           scope: str = "layer", allocation: str = "uniform",
           layers: Sequence[Rule] | None = None, skip_first_last: bool = True,
           order: Sequence[str] | None = None) -> optax.GradientTransformation:
  """Random pruning (baseline) driven by ``key``."""
  return pruner(Unstructured(sparsity, scope, allocation), random_score, schedule,
                layers=layers, skip_first_last=skip_first_last, order=order, key=key)


def saliency(sparsity: float, schedule: Schedule | None = None, *, scope: str = "layer",
             allocation: str = "uniform", layers: Sequence[Rule] | None = None,
             skip_first_last: bool = True,
             order: Sequence[str] | None = None) -> optax.GradientTransformation:
  """Prune the smallest |w * g|. ``g`` is the update this transform receives: after plain SGD it
  is ``-lr * grad`` (same ranking as the gradient); after Adam it is Adam's step."""
  return pruner(Unstructured(sparsity, scope, allocation), saliency_score, schedule,
                layers=layers, skip_first_last=skip_first_last, order=order)


def block(sparsity: float, shape: tuple[int, int] = (4, 1), schedule: Schedule | None = None, *,
          score: str = "magnitude", scope: str = "layer", allocation: str = "uniform",
          layers: Sequence[Rule] | None = None, skip_first_last: bool = True,
          order: Sequence[str] | None = None) -> optax.GradientTransformation:
  """Block pruning: whole (input, output) blocks of ``shape`` ranked by the norm of their scores."""
  return pruner(Block(sparsity, tuple(shape), scope, allocation), _score_fn(score), schedule,
                layers=layers, skip_first_last=skip_first_last, order=order)


def nm(n: int, m: int, schedule: Schedule | None = None, *, score: str = "magnitude",
       layers: Sequence[Rule] | None = None, skip_first_last: bool = True,
       order: Sequence[str] | None = None) -> optax.GradientTransformation:
  """N:M pruning (e.g. 2:4) along each kernel's input axis."""
  return pruner(NM(n, m), _score_fn(score), schedule, layers=layers,
                skip_first_last=skip_first_last, order=order)
