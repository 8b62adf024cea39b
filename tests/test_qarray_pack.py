"""Hypothesis round trips of the planar packing and of QArray.from_codes / dequantize."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from compressjax.qarray import (QArray, code_range, codes_per_byte, pack, padded_rows,
                                      unpack)

BITS = st.sampled_from([1, 2, 3, 4, 8, 12])
GROUPS = st.sampled_from([None, 1, 2, 4, 8])
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)

# One compilation per drawn shape instead of one per primitive keeps the suite fast.
_pack = jax.jit(pack, static_argnums=(1, 2, 3))
_unpack = jax.jit(unpack, static_argnums=(1, 2, 3))


@functools.partial(jax.jit, static_argnames=("bits", "signed", "group_size"))
def _round_trip(values, scale, zero, *, bits, signed, group_size):
  w = QArray.from_codes(values, scale, zero, bits=bits, signed=signed, group_size=group_size)
  return w.codes(), w.dequantize()


@st.composite
def codes(draw):
  bits, signed, group = draw(BITS), draw(st.booleans()), draw(GROUPS)
  k = draw(st.integers(1, 6)) * (group or 1)  # a group always divides K
  n = draw(st.integers(1, 5))
  lo, hi = code_range(bits, signed)
  seed = draw(st.integers(0, 2**16))
  values = np.random.default_rng(seed).integers(lo, hi + 1, size=(k, n))
  return values, bits, signed, group


@SETTINGS
@given(codes())
def test_pack_unpack_round_trip(case):
  values, bits, signed, group = case
  packed = _pack(jnp.asarray(values), bits, signed, group)
  k_pad = padded_rows(values.shape[0], bits, group)
  assert packed.shape == (k_pad // codes_per_byte(bits), values.shape[1])
  assert packed.dtype == (jnp.uint16 if bits > 8 else jnp.uint8)
  np.testing.assert_array_equal(_unpack(packed, bits, signed, values.shape[0]), values)


@SETTINGS
@given(codes())
def test_planar_layout(case):
  # Plane j of packed row p is logical row j * P + p, stored at bit offset j * bits.
  values, bits, signed, group = case
  per = codes_per_byte(bits)
  packed = np.asarray(_pack(jnp.asarray(values), bits, signed, group), np.int64)
  offset = 2 ** (bits - 1) if signed else 0
  k_pad = padded_rows(values.shape[0], bits, group)
  stored = np.pad(values + offset, ((0, k_pad - values.shape[0]), (0, 0)))
  plane = k_pad // per
  for j in range(per):
    np.testing.assert_array_equal((packed >> (j * bits)) & (2**bits - 1),
                                  stored[j * plane:(j + 1) * plane])


@SETTINGS
@given(codes(), st.booleans(), st.sampled_from(["tensor", "channel", "group"]))
def test_from_codes_dequantize(case, with_zero, granularity):
  values, bits, signed, group = case
  k, n = values.shape
  rows = k // group if granularity == "group" and group else 1
  cols = 1 if granularity == "tensor" else n
  rng = np.random.default_rng(k * 31 + n)
  scale = rng.uniform(0.1, 2.0, size=(rows, cols)).astype(np.float32)
  zero = rng.uniform(-1, 1, size=(rows, cols)).astype(np.float32) if with_zero else None
  got_codes, got = _round_trip(jnp.asarray(values), scale, zero, bits=bits, signed=signed,
                               group_size=group)
  np.testing.assert_array_equal(got_codes, values)
  expected = (values.reshape(rows, k // rows, n) - (0 if zero is None else zero[:, None])) * \
      scale[:, None]
  np.testing.assert_allclose(got, expected.reshape(k, n), rtol=1e-6, atol=1e-6)


def test_out_of_range_codes_are_clipped():
  w = QArray.from_codes(jnp.array([[-9, 8], [3, 100]]), 1.0, bits=4, signed=True)
  np.testing.assert_array_equal(w.codes(), [[-8, 7], [3, 7]])
