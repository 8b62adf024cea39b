"""W8A8 Pallas kernel (interpret mode), its reference, the XLA int8 path and quantize_rows."""

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.kernels import (BlockConfig, quantize_rows, w8a8_matmul, w8a8_reference,
                                 w8a8_xla)


def _operands(m, k, n, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(m, k)), jnp.float32)
  codes = jnp.asarray(rng.integers(-128, 128, size=(k, n)), jnp.int8)
  scale = jnp.asarray(rng.uniform(0.01, 0.02, size=(1, n)), jnp.float32)
  return (*quantize_rows(x), codes, scale)


def test_quantize_rows_is_symmetric_absmax_per_row():
  x = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]])
  q, scale = quantize_rows(x)
  assert q.dtype == jnp.int8 and scale.shape == (3, 1)
  np.testing.assert_allclose(scale[:, 0], [2 / 127, 0.0, 3 / 127], rtol=1e-6)
  np.testing.assert_array_equal(np.abs(q).max(axis=1), [127, 0, 127])
  np.testing.assert_allclose(q * scale, x, atol=np.asarray(scale).max() / 2 + 1e-7)


@pytest.mark.parametrize(
    "storage, config, out_dtype",
    [
        ("int8", BlockConfig(block_m=8, block_n=16, block_k=32, split_k=2), jnp.float32),
        ("uint8", BlockConfig(block_m=16, block_n=64, block_k=64), jnp.bfloat16),
    ],
)
def test_matches_reference_ragged(storage, config, out_dtype):
  x_q, x_scale, codes, w_scale = _operands(3, 192, 40)
  offset = 128 if storage == "uint8" else 0
  stored = (codes.astype(jnp.int32) + offset).astype(storage)
  y = w8a8_matmul(x_q, x_scale, stored, w_scale, w_offset=offset, out_dtype=out_dtype,
                  config=config, interpret=True)
  expected = w8a8_reference(x_q, x_scale, codes, w_scale)
  assert y.shape == (3, 40) and y.dtype == out_dtype
  tol = 1e-6 if out_dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, rtol=tol,
                             atol=tol * np.abs(expected).max())


def test_reference_and_xla_are_exact_integer_matmuls():
  x_q, x_scale, codes, w_scale = _operands(4, 64, 8, seed=1)
  acc = np.asarray(x_q, np.int64) @ np.asarray(codes, np.int64)
  expected = acc * np.asarray(x_scale) * np.asarray(w_scale)
  np.testing.assert_allclose(w8a8_reference(x_q, x_scale, codes, w_scale), expected, rtol=1e-6)
  stored = (codes.astype(jnp.int32) + 128).astype(jnp.uint8)
  np.testing.assert_allclose(w8a8_xla(x_q, x_scale, stored, w_scale, w_offset=128), expected,
                             rtol=1e-6)


class TestBadInput:

  def test_float_weights(self):
    x_q, x_scale, codes, w_scale = _operands(2, 32, 8)
    with pytest.raises(TypeError, match="w_codes must be int8.*float32"):
      w8a8_matmul(x_q, x_scale, codes.astype(jnp.float32), w_scale, interpret=True)

  def test_float_activations(self):
    x_q, x_scale, codes, w_scale = _operands(2, 32, 8)
    with pytest.raises(TypeError, match="x_q must be int8.*float32"):
      w8a8_matmul(x_q.astype(jnp.float32), x_scale, codes, w_scale, interpret=True)

  def test_k_mismatch(self):
    x_q, x_scale, codes, w_scale = _operands(2, 32, 8)
    with pytest.raises(ValueError, match="K=32.*K=16"):
      w8a8_xla(x_q, x_scale, codes[:16], w_scale)

  def test_offset_out_of_int8(self):
    x_q, x_scale, codes, w_scale = _operands(2, 32, 8)
    with pytest.raises(ValueError, match="w_offset=0 maps uint8"):
      w8a8_reference(x_q, x_scale, codes.astype(jnp.uint8), w_scale)

  def test_scale_shape(self):
    x_q, x_scale, codes, w_scale = _operands(2, 32, 8)
    with pytest.raises(ValueError, match=r"w_scale has shape \(4, 8\)"):
      w8a8_reference(x_q, x_scale, codes, jnp.ones((4, 8)))
