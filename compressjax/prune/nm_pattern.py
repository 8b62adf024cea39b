"""N:M structured sparsity: in every group of M consecutive weights along the input (contraction)
axis keep the N largest. 2:4 is the pattern sparse tensor cores accelerate.

For a Dense kernel (in, out) the groups run along ``in``; for a Conv kernel (kh, kw, in, out) along
the input channels (axis -2), as NVIDIA's ASP does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

AXIS = -2


def check_nm(n: int, m: int, shape: tuple[int, ...] | None = None, name: str = "kernel") -> None:
  """Refuses N > M, non-positive N or M, or an input axis that M does not divide."""
  if not (isinstance(n, int) and isinstance(m, int)) or n < 1 or m < 1 or n > m:
    raise ValueError(f"N:M sparsity needs integers 1 <= N <= M, got N={n!r}, M={m!r}")
  if shape is not None:
    if len(shape) < 2 or shape[AXIS] % m:
      raise ValueError(f"N:M sparsity of {name}: M={m} must divide the input axis (axis {AXIS}) "
                       f"of shape {shape}")


def to_groups(x: jax.Array, m: int) -> jax.Array:
  """(..., K, out) -> (..., out, K // m, m): the groups as the last axis."""
  x = jnp.moveaxis(x, AXIS, -1)
  return x.reshape(*x.shape[:-1], x.shape[-1] // m, m)


def from_groups(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of ``to_groups`` for a tensor of the original ``shape``."""
  x = g.reshape(*g.shape[:-2], -1)
  return jnp.moveaxis(x, -1, AXIS).reshape(shape)


def nm_mask(scores: jax.Array, n: int, m: int) -> jax.Array:
  """Boolean mask keeping the n highest scores of every group of m (ties: lower index wins)."""
  check_nm(n, m, scores.shape)
  groups = to_groups(scores, m)
  ranks = jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1)
  return from_groups(ranks < n, scores.shape)


@dataclasses.dataclass(frozen=True)
class NM:
  """The N:M pattern as a pruner pattern; it is all-or-nothing (sparsity 1 - N/M) and becomes
  active on the first mask update at which the schedule's sparsity is above 0."""

  n: int
  m: int

  def __post_init__(self):
    check_nm(self.n, self.m)

  def check(self, path: str, shape: tuple[int, ...]) -> None:
    check_nm(self.n, self.m, shape, path)

  def masks(self, scores, alive, sparsity_at):
    active = sparsity_at(1.0) > 0
    out = {}
    for p, s in scores.items():
      keep = nm_mask(jnp.where(alive[p], s, -jnp.inf), self.n, self.m)
      out[p] = jnp.where(active, keep, alive[p])
    return out
