"""Compressed storage of N:M-sparse kernels: the kept values plus their in-group positions.

``values`` holds the N kept weights of every group of M along the kernel's input axis, with that
axis moved last: shape (..., out, K * N / M). ``indices`` (uint8, in [0, M)) says where each kept
weight sat in its group: shape (..., out, K / M, N). Stored densely packed an index needs
ceil(log2 M) bits (2 bits for 2:4), the layout sparse tensor cores read.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from compressjax.prune.nm_pattern import check_nm, from_groups, nm_mask, to_groups


@struct.dataclass
class NMArray:
  """An N:M-compressed kernel; ``decompress_nm`` restores the dense array."""

  values: jax.Array
  indices: jax.Array
  n: int = struct.field(pytree_node=False)
  m: int = struct.field(pytree_node=False)
  shape: tuple[int, ...] = struct.field(pytree_node=False)

  @property
  def index_bits(self) -> int:
    return max(1, math.ceil(math.log2(self.m)))

  @property
  def nbytes(self) -> int:
    """Bytes of values plus bit-packed indices."""
    return self.values.nbytes + math.ceil(self.indices.size * self.index_bits / 8)

  @property
  def dense_nbytes(self) -> int:
    return math.prod(self.shape) * self.values.dtype.itemsize


def compress_nm(w: jax.Array, n: int, m: int, mask: jax.Array | None = None) -> NMArray:
  """Compresses ``w`` keeping, per group, the positions in ``mask`` (default: the n largest |w|).

  A given mask must keep exactly n of every m (as an N:M pruner's masks do).
  """
  check_nm(n, m, w.shape, "compress_nm input")
  if mask is None:
    mask = nm_mask(jnp.abs(w), n, m)
  groups_mask = to_groups(mask, m)
  counts = np.asarray(jnp.sum(groups_mask, axis=-1))
  if not np.all(counts == n):
    raise ValueError(f"compress_nm: mask must keep exactly {n} of every {m} weights along the "
                     f"input axis; found groups keeping {sorted(set(counts.ravel().tolist()))}")
  idx = jnp.argsort(~groups_mask, axis=-1, stable=True)[..., :n]
  values = jnp.take_along_axis(to_groups(w, m), idx, axis=-1)
  return NMArray(values.reshape(*values.shape[:-2], -1), idx.astype(jnp.uint8), n, m,
                 tuple(w.shape))


def decompress_nm(a: NMArray) -> jax.Array:
  """The dense kernel (zeros at pruned positions)."""
  values = a.values.reshape(a.indices.shape)
  onehot = jax.nn.one_hot(a.indices, a.m, dtype=values.dtype)
  groups = jnp.sum(onehot * values[..., None], axis=-2)
  return from_groups(groups, a.shape)
