"""Sparse storage of pruned weights: exact round trips, sizes by formula, one-line errors."""

import math

import jax
import numpy as np
import pytest

from compressjax.artifacts import sparse
from compressjax.prune.nm_pattern import nm_mask
from compressjax.qarray import QArray

SHAPE = (3, 3, 8, 6)  # a conv kernel: K = 72, N = 6


def _pruned_codes(rng, bits, signed, keep=0.4):
  lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  codes = rng.integers(lo, hi + 1, SHAPE)
  return np.where(rng.random(SHAPE) < keep, codes, 0)


def nm_pruned(mat, n, m):
  """``mat`` (K, N) with the n largest |values| of every m rows of a column kept, others 0."""
  return np.where(nm_mask(np.abs(mat), n, m), mat, 0)


@pytest.mark.parametrize("bits, signed, group_size", [(4, True, None), (8, True, 24),
                                                      (2, True, None), (3, False, None)])
def test_bitmap_round_trip_and_size(bits, signed, group_size):
  rng = np.random.default_rng(bits)
  codes = _pruned_codes(rng, bits, signed)
  groups = 72 // group_size if group_size else 1
  zero_point = None if signed else np.full((1, 6), 2.0)
  if not signed:  # the zero code is the zero point: pruned positions hold 2
    codes = np.where(codes == 0, 2, codes)
  q = QArray.from_codes(codes, rng.random((groups, 6)) + 0.1, zero_point, bits=bits,
                        signed=signed, group_size=group_size)
  w = sparse.pack(q)
  for got in (sparse.unpack(w), jax.jit(sparse.unpack)(w)):
    assert got.shape == q.shape and got.bits == bits and got.group_size == group_size
    np.testing.assert_array_equal(got.packed, q.packed)
    np.testing.assert_array_equal(got.scale, q.scale)
  nonzero = int(np.count_nonzero(codes != (0 if signed else 2)))
  extra = q.scale.nbytes + (0 if q.zero_point is None else q.zero_point.nbytes)
  assert w.stored == nonzero
  assert w.nbytes == sparse.nbytes(w) == (math.ceil(nonzero * bits / 8) + math.ceil(72 * 6 / 8)
                                          + extra)
  assert w.nbytes == sum(leaf.nbytes for leaf in jax.tree.leaves(w))  # the stored arrays


@pytest.mark.parametrize("n, m", [(2, 4), (1, 8), (3, 3)])
def test_nm_round_trip_and_size(n, m):
  rng = np.random.default_rng(m)
  mat = nm_pruned(_pruned_codes(rng, 4, True, keep=0.9).reshape(72, 6), n, m)
  q = QArray.from_codes(mat.reshape(SHAPE), np.ones((1, 6)), bits=4, signed=True)
  w = sparse.pack(q, "nm", n=n, m=m)
  np.testing.assert_array_equal(jax.jit(sparse.unpack)(w).packed, q.packed)
  stored = 72 // m * n * 6
  assert w.stored == stored
  assert w.nbytes == (math.ceil(stored * 4 / 8) + math.ceil(stored * math.ceil(math.log2(m)) / 8)
                      + q.scale.nbytes)


def test_float_weights_round_trip():
  rng = np.random.default_rng(0)
  dense = np.where(rng.random(SHAPE) < 0.3, rng.normal(size=SHAPE), 0).astype(np.float32)
  w = sparse.pack(dense)
  np.testing.assert_array_equal(sparse.unpack(w), dense)
  assert w.nbytes == np.count_nonzero(dense) * 4 + math.ceil(dense.size / 8)
  two_four = nm_pruned(dense.reshape(72, 6), 2, 4).reshape(SHAPE)
  np.testing.assert_array_equal(jax.jit(sparse.unpack)(sparse.pack(two_four, "nm", n=2, m=4)),
                                two_four)


def test_bad_input_is_one_line_naming_the_site():
  q = QArray.from_codes(np.ones(SHAPE, np.int32), np.ones((1, 6)), bits=4, signed=True)
  cases = [
      (dict(format="nm", n=5, m=4), "conv1/kernel: N:M needs integers 1 <= n <= m, got n=5, m=4"),
      (dict(format="nm", n=2, m=4), "conv1/kernel: not 2:4 sparse (a group of 4 rows holds 4 "
                                    "nonzeros; allowed: at most 2)"),
      (dict(format="nm", n=2, m=5), "conv1/kernel: m=5 must divide the contraction size K=72"),
      (dict(format="csr"), "conv1/kernel: unknown format 'csr'; allowed: bitmap, nm"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError) as info:
      sparse.pack(q, name="conv1/kernel", **kwargs)
    assert str(info.value) == f"sparse storage of {message}" and "\n" not in str(info.value)
  asym = QArray.from_codes(np.ones(SHAPE, np.int32), np.ones((1, 6)), np.full((1, 6), 0.5),
                           bits=4, signed=False)
  with pytest.raises(ValueError, match="conv1/kernel: zero point .* is not an integer"):
    sparse.pack(asym, name="conv1/kernel")
  with pytest.raises(ValueError, match="unknown format '2-4'; allowed: 'bitmap' or 'N:M'"):
    sparse.parse_format("2-4", "conv1/kernel")
  with pytest.raises(ValueError, match="site 'conv9/kernel': it has no served QArray weight; "
                                       "sites with one: conv1/kernel"):
    sparse.pack_sites({"served": {"conv1": {"kernel": {"weight": q}}}}, {"conv9/kernel": "bitmap"})


def test_stored_bytes_counts_the_sparse_sites():
  rng = np.random.default_rng(1)
  q = QArray.from_codes(_pruned_codes(rng, 4, True), np.ones((1, 6)), bits=4, signed=True)
  bias = np.zeros(6, np.float32)
  serving_vars = {"params": {"conv1": {"bias": bias}}, "served": {"conv1": {"kernel": {
      "weight": q}}}}
  got = sparse.stored_bytes(serving_vars, {"conv1/kernel": "bitmap"})
  assert got == bias.nbytes + sparse.pack(q).nbytes < bias.nbytes + q.nbytes
