"""Random ``QArray`` weights for the kernel tests."""

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.qarray import QArray, code_range


def random_qarray(seed, k, n, *, bits, group_size=None, signed=True, zero_point=False,
                  per_tensor=False):
  """Random codes over the full range, positive scales and (optionally) float zero points."""
  rng = np.random.default_rng(seed)
  lo, hi = code_range(bits, signed)
  codes = rng.integers(lo, hi + 1, size=(k, n))
  rows, cols = (1, 1) if per_tensor else ((k // group_size if group_size else 1), n)
  scale = rng.uniform(0.5, 1.5, size=(rows, cols)) / 2 ** (bits - 1)
  zero = rng.uniform(-2, 2, size=(rows, cols)) if zero_point else None
  return QArray.from_codes(jnp.asarray(codes), scale, zero, bits=bits, signed=signed,
                           group_size=group_size)


@pytest.fixture
def make_qarray():
  return random_qarray


@pytest.fixture
def normal():
  """``normal(shape, dtype, seed)``: standard-normal activations."""
  def make(shape, dtype=jnp.float32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)
  return make


def assert_close(actual, expected, dtype):
  """Tolerance scaled by the output's magnitude: f32 tight, bf16/f16 a few output ulps."""
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  expected = np.asarray(jnp.asarray(expected, jnp.float32))
  tol = 1e-5 if jnp.dtype(dtype) == jnp.float32 else 1.5e-2
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.fixture
def close():
  return assert_close
