"""Block sparsity: prune whole (rows, cols) blocks of a kernel's last two axes (input, output),
scored by the L2 norm of the block's weight scores. Hardware that skips zero blocks (and dense
kernels over block-sparse layouts) gains speed where unstructured sparsity gains none.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from compressjax.prune.allocation import check_sparsity
from compressjax.prune.ranking import check_scope, rank_masks


def check_block(block: tuple[int, int], shape: tuple[int, ...] | None = None,
                name: str = "kernel") -> None:
  """Refuses a block that is not two positive ints dividing the kernel's last two axes."""
  if len(block) != 2 or any(not isinstance(b, int) or b < 1 for b in block):
    raise ValueError(f"block shape must be two positive ints (input, output), got {block!r}")
  if shape is not None and (shape[-2] % block[0] or shape[-1] % block[1]):
    raise ValueError(f"block {block} must divide the last two axes of {name} with shape {shape}")


def to_blocks(x: jax.Array, block: tuple[int, int]) -> jax.Array:
  """(..., I, O) -> (..., I/bi, O/bo, bi*bo)."""
  *lead, i, o = x.shape
  bi, bo = block
  x = x.reshape(*lead, i // bi, bi, o // bo, bo)
  x = jnp.swapaxes(x, -3, -2)
  return x.reshape(*lead, i // bi, o // bo, bi * bo)


def expand_blocks(mask: jax.Array, block: tuple[int, int]) -> jax.Array:
  """(..., I/bi, O/bo) -> (..., I, O), each unit repeated over its block."""
  return jnp.repeat(jnp.repeat(mask, block[0], axis=-2), block[1], axis=-1)


@dataclasses.dataclass(frozen=True)
class Block:
  """Prune blocks; sparsity is the fraction of blocks (and so of weights) removed."""

  sparsity: float
  block: tuple[int, int] = (4, 1)
  scope: str = "layer"
  allocation: str = "uniform"

  def __post_init__(self):
    check_sparsity(self.sparsity)
    check_block(self.block)
    check_scope(self.scope, self.allocation)

  def check(self, path: str, shape: tuple[int, ...]) -> None:
    check_block(self.block, shape, path)

  def masks(self, scores, alive, sparsity_at):
    units = {}
    for p, s in scores.items():
      norms = jnp.sqrt(jnp.sum(jnp.square(to_blocks(s, self.block)), axis=-1))
      units[p] = jnp.where(jnp.any(to_blocks(alive[p], self.block), axis=-1), norms, -jnp.inf)
    shapes = {p: s.shape for p, s in scores.items()}
    keep = rank_masks(units, shapes, self.sparsity, self.scope, self.allocation, sparsity_at)
    return {p: expand_blocks(k, self.block) for p, k in keep.items()}
