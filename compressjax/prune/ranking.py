"""Keep the highest-scoring units: per layer (each its own sparsity) or with one global threshold.

Exactly ``round(s * n)`` units are pruned (ties broken by position), so the reached sparsity does
not depend on ties in the scores. Units already pruned carry score -inf, which keeps masks nested
as the sparsity grows (a pruned weight never comes back).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from compressjax.prune.allocation import ALLOCATIONS, allocate, check_sparsity

SCOPES = ("layer", "global")
SparsityAt = Callable[[float], jax.Array]


def keep_top(scores: jax.Array, sparsity: jax.Array) -> jax.Array:
  """Boolean mask keeping all but the ``round(sparsity * size)`` lowest scores."""
  flat = scores.reshape(-1)
  n_prune = jnp.round(sparsity * flat.size).astype(jnp.int32)
  order = jnp.argsort(flat, stable=True)
  ranks = jnp.zeros(flat.size, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))
  return (ranks >= n_prune).reshape(scores.shape)


def check_scope(scope: str, allocation: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
  if allocation not in ALLOCATIONS:
    raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
  if scope == "global" and allocation != "uniform":
    raise ValueError(f"scope='global' sets per-layer sparsity by one threshold; allocation must "
                     f"be 'uniform', got {allocation!r}")


def rank_masks(scores: Mapping[str, jax.Array], weight_shapes: Mapping[str, tuple[int, ...]],
               sparsity: float, scope: str, allocation: str,
               sparsity_at: SparsityAt) -> dict[str, jax.Array]:
  """Masks over the units in ``scores`` (one array per layer).

  Args:
    scores: unit scores per layer (-inf for units already pruned).
    weight_shapes: the layers' weight shapes (for the ERK allocation).
    sparsity: the final target sparsity.
    scope: 'layer' (each layer its allocated sparsity) or 'global' (one threshold).
    allocation: 'uniform' or 'erk' (scope 'layer' only).
    sparsity_at: maps a final sparsity to the schedule's sparsity at the current step.
  """
  if scope == "layer":
    finals = allocate(allocation, sparsity, weight_shapes)
    return {p: keep_top(s, sparsity_at(finals[p])) for p, s in scores.items()}
  paths = list(scores)
  flat = jnp.concatenate([scores[p].reshape(-1).astype(jnp.float32) for p in paths])
  keep = keep_top(flat, sparsity_at(sparsity))
  splits = list(itertools.accumulate(math.prod(scores[p].shape) for p in paths))[:-1]
  return {p: k.reshape(scores[p].shape) for p, k in zip(paths, jnp.split(keep, splits))}


@dataclasses.dataclass(frozen=True)
class Unstructured:
  """Prune individual weights."""

  sparsity: float
  scope: str = "layer"
  allocation: str = "uniform"

  def __post_init__(self):
    check_sparsity(self.sparsity)
    check_scope(self.scope, self.allocation)

  def check(self, path: str, shape: tuple[int, ...]) -> None:
    del path, shape  # every kernel shape works

  def masks(self, scores, alive, sparsity_at):
    scores = {p: jnp.where(alive[p], s, -jnp.inf) for p, s in scores.items()}
    shapes = {p: s.shape for p, s in scores.items()}
    return rank_masks(scores, shapes, self.sparsity, self.scope, self.allocation, sparsity_at)
