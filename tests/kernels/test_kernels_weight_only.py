"""Weight-only Pallas kernel (interpret mode) against its jnp reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.kernels import BlockConfig, weight_only_matmul, weight_only_reference
from compressjax.qarray import QArray

# Small tiles so every case runs several M/N blocks, K steps and two K splits.
SMALL = BlockConfig(block_m=8, block_n=16, block_k=32, split_k=2)


@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matches_reference_every_bits_and_group(make_qarray, normal, close, bits, group_size):
  # Ragged M=3, N=40. Each bit-width meets f32 and bf16, with and without zero points.
  zero_point = group_size in (None, 64)
  dtype = jnp.bfloat16 if group_size in (32, 128) else jnp.float32
  w = make_qarray(bits * 10 + (group_size or 0), 256, 40, bits=bits, group_size=group_size,
                  signed=bits != 2, zero_point=zero_point)
  x = normal((3, 256), dtype, seed=bits)
  y = weight_only_matmul(x, w, config=SMALL, interpret=True)
  assert y.shape == (3, 40) and y.dtype == dtype
  close(y, weight_only_reference(x, w), dtype)


@pytest.mark.parametrize(
    "bits, group_size, signed, dtype",
    [(2, 64, False, jnp.float32), (4, 32, True, jnp.bfloat16), (8, None, False, jnp.float32)],
)
def test_ragged_k_default_tiles(make_qarray, normal, close, bits, group_size, signed, dtype):
  # K=192 is no multiple of the tiles and pads differently per bit-width (planes of 96/48 rows).
  w = make_qarray(bits, 192, 40, bits=bits, group_size=group_size, signed=signed, zero_point=True)
  x = normal((3, 192), dtype, seed=1)
  y = weight_only_matmul(x, w, out_dtype=jnp.float32, interpret=True)
  assert y.shape == (3, 40) and y.dtype == jnp.float32
  close(y, weight_only_reference(x, w, out_dtype=jnp.float32), dtype)


def test_block_k_below_group_split_beyond_blocks_scalar_zero(make_qarray, normal, close):
  # block_k=16 < group 64 is rounded up to 64; split_k=8 > 2 K-blocks is capped; grouped
  # scales with one zero point for the whole tensor.
  base = make_qarray(3, 256, 32, bits=4, group_size=64)
  w = QArray.from_codes(base.codes(), base.scale, 0.5, bits=4, signed=True, group_size=64)
  assert w.scale.shape == (4, 32) and w.zero_point.shape == (1, 1)
  x = normal((2, 256), seed=3)
  config = BlockConfig(block_m=8, block_n=32, block_k=16, split_k=8)
  close(weight_only_matmul(x, w, config=config, interpret=True), weight_only_reference(x, w),
        jnp.float32)


def test_reference_is_x_times_dequantized_weight(make_qarray, normal):
  w = make_qarray(5, 64, 8, bits=2, group_size=32, zero_point=True)
  x = normal((2, 64), seed=5)
  expected = np.asarray(x, np.float64) @ np.asarray(w.dequantize(), np.float64)
  np.testing.assert_allclose(weight_only_reference(x, w), expected, rtol=1e-5, atol=1e-5)


def test_rank3_weight_is_viewed_as_matrix(normal, close):
  codes = jnp.asarray(np.random.default_rng(6).integers(-8, 8, size=(4, 16, 24)))
  w = QArray.from_codes(codes, 0.1, bits=4, signed=True)
  x = normal((3, 64), seed=6)
  close(weight_only_matmul(x, w, interpret=True), x @ w.dequantize().reshape(64, 24), jnp.float32)


class TestBadInput:

  def test_int_activations(self, make_qarray):
    w = make_qarray(0, 64, 8, bits=4)
    with pytest.raises(TypeError, match="x must be a float array.*int8"):
      weight_only_matmul(jnp.ones((2, 64), jnp.int8), w, interpret=True)

  def test_k_mismatch(self, make_qarray, normal):
    w = make_qarray(0, 64, 8, bits=4)
    with pytest.raises(ValueError, match="K=32.*K=64"):
      weight_only_matmul(normal((2, 32)), w, interpret=True)

  def test_float_weight(self, normal):
    with pytest.raises(TypeError, match="w must be a QArray, got"):
      weight_only_matmul(normal((2, 64)), normal((64, 8)), interpret=True)

  def test_group_size_not_dividing_k(self, make_qarray, normal):
    # from_codes refuses it; a hand-built QArray is refused by the kernel.
    with pytest.raises(ValueError, match="group_size=48"):
      make_qarray(0, 64, 8, bits=4, group_size=48)
    w = make_qarray(0, 64, 8, bits=4, group_size=32)
    bad = QArray(w.packed, w.scale, None, 4, True, w.shape, 48)
    with pytest.raises(ValueError, match="group_size=48 must be a positive divisor of K=64"):
      weight_only_matmul(normal((2, 64)), bad, interpret=True)

  def test_sixteen_bit_storage(self, make_qarray, normal):
    w = make_qarray(0, 64, 8, bits=12)
    with pytest.raises(ValueError, match="bits=12 stored as uint16"):
      weight_only_matmul(normal((2, 64)), w, interpret=True)

  def test_scale_shape(self, make_qarray, normal):
    w = make_qarray(0, 64, 8, bits=4, group_size=32)
    bad = QArray(w.packed, jnp.ones((3, 8)), None, 4, True, w.shape, 32)
    with pytest.raises(ValueError, match=r"w.scale has shape \(3, 8\)"):
      weight_only_matmul(normal((2, 64)), bad, interpret=True)

  def test_pallas_on_cpu_asks_for_interpret(self, make_qarray, normal):
    w = make_qarray(0, 64, 8, bits=4)
    with pytest.raises(ValueError, match="interpret=True"):
      weight_only_matmul(normal((2, 64)), w)
