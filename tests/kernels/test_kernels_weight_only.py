"""Weight-only Pallas kernels (GPU and TPU variants, interpret mode) against their jnp reference."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.kernels import BlockConfig, weight_only_matmul, weight_only_reference
from compressjax.kernels._codes import codes_to_float, magic_dtype
from compressjax.qarray import QArray

KERNELS = ["gpu", "tpu"]
# Small tiles: several M/N blocks and K steps. GPU: split_k=3 over 4 K blocks leaves a short
# last split (the masked tail). TPU: one 128-row K block per step (K is a grid axis).
SMALL = {"gpu": BlockConfig(block_m=16, block_n=16, block_k=32, split_k=3),
         "tpu": BlockConfig(block_m=8, block_n=128, block_k=128)}


@pytest.mark.parametrize("bits, dtype", list(itertools.product([2, 4, 8], ["bfloat16", "float16",
                                                                           "float32"])))
@pytest.mark.parametrize("wide", [False, True])
def test_codes_to_float_is_exact_for_every_code(bits, dtype, wide):
  u = jnp.arange(2**bits, dtype=jnp.int32)
  for offset in (0, 2 ** (bits - 1)):
    y = codes_to_float(u, bits, offset, dtype, wide=wide)
    assert y.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.arange(2**bits) - offset)


def test_magic_dtype_widens_only_when_codes_overflow_the_mantissa():
  assert magic_dtype(4, jnp.bfloat16) == jnp.bfloat16
  assert magic_dtype(8, jnp.bfloat16) == jnp.float32  # 7 mantissa bits
  assert magic_dtype(8, jnp.float16) == jnp.float16
  assert magic_dtype(2, jnp.bfloat16, wide=True) == jnp.float32
  with pytest.raises(TypeError, match="not int8"):
    magic_dtype(4, jnp.int8)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_every_bits_and_group(make_qarray, normal, close, kernel, bits, group_size):
  # Ragged M=3, N=40; K=256 or, for groups <= 64, K=192 (planes padded past K). Zero points,
  # signedness and f32/bf16 alternate across the grid; test_zero_points_and_dtypes crosses them.
  k = 256 if group_size in (None, 128) else 192
  zero_point = group_size in (None, 64)
  dtype = jnp.bfloat16 if group_size in (32, 128) else jnp.float32
  w = make_qarray(bits * 10 + (group_size or 0), k, 40, bits=bits, group_size=group_size,
                  signed=bits != 2, zero_point=zero_point)
  x = normal((3, k), dtype, seed=bits)
  y = weight_only_matmul(x, w, config=SMALL[kernel], interpret=True, platform=kernel)
  assert y.shape == (3, 40) and y.dtype == dtype
  close(y, weight_only_reference(x, w), dtype)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("zero_point, dtype", [(False, jnp.bfloat16), (True, jnp.float32),
                                               (True, jnp.float16)])
def test_zero_points_and_dtypes(make_qarray, normal, close, kernel, zero_point, dtype):
  w = make_qarray(7, 256, 40, bits=4, group_size=64, zero_point=zero_point)
  x = normal((5, 256), dtype, seed=7)
  y = weight_only_matmul(x, w, config=SMALL[kernel], out_dtype=jnp.float32, interpret=True,
                         platform=kernel)
  assert y.dtype == jnp.float32
  close(y, weight_only_reference(x, w, out_dtype=jnp.float32), dtype)


@pytest.mark.parametrize("kernel", KERNELS)
def test_scales_on_the_tile_when_block_m_exceeds_the_group(make_qarray, normal, close, kernel):
  # block_m=64 > group 32: group scales multiply the weight tile instead of the accumulator.
  w = make_qarray(8, 256, 40, bits=4, group_size=32, zero_point=True)
  x = normal((70, 256), jnp.bfloat16, seed=8)
  config = BlockConfig(block_m=64, block_n=32, block_k=64, split_k=2)
  if kernel == "tpu":
    config = BlockConfig(block_m=64, block_n=128, block_k=256)
  y = weight_only_matmul(x, w, config=config, interpret=True, platform=kernel)
  close(y, weight_only_reference(x, w), jnp.bfloat16)


@pytest.mark.parametrize("split_k", [3, 16])
def test_split_k_any_count_masks_the_tail(make_qarray, normal, close, split_k):
  # 8-bit per channel, K=320: 10 K blocks of 32 rows; 3 splits run 4+4+2 blocks, 16 is capped.
  w = make_qarray(9, 320, 24, bits=8, zero_point=True)
  x = normal((2, 320), seed=9)
  config = BlockConfig(block_m=16, block_n=16, block_k=32, split_k=split_k)
  close(weight_only_matmul(x, w, config=config, interpret=True), weight_only_reference(x, w),
        jnp.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bits, group_size, signed", [(2, 64, False), (4, 32, True),
                                                      (8, None, False)])
def test_ragged_k_default_tiles(make_qarray, normal, close, kernel, bits, group_size, signed):
  # K=192 is no multiple of the tiles and pads differently per bit-width (planes of 96/48 rows).
  w = make_qarray(bits, 192, 40, bits=bits, group_size=group_size, signed=signed, zero_point=True)
  x = normal((3, 192), jnp.bfloat16, seed=1)
  y = weight_only_matmul(x, w, out_dtype=jnp.float32, interpret=True, platform=kernel)
  assert y.shape == (3, 40) and y.dtype == jnp.float32
  close(y, weight_only_reference(x, w, out_dtype=jnp.float32), jnp.bfloat16)


@pytest.mark.parametrize("kernel", KERNELS)
def test_grouped_scales_with_one_zero_point(make_qarray, normal, close, kernel):
  # block_k=16 < group 64 is rounded up to whole groups; one zero point for the whole tensor.
  base = make_qarray(3, 256, 32, bits=4, group_size=64)
  w = QArray.from_codes(base.codes(), base.scale, 0.5, bits=4, signed=True, group_size=64)
  assert w.scale.shape == (4, 32) and w.zero_point.shape == (1, 1)
  x = normal((2, 256), seed=3)
  config = BlockConfig(block_m=8, block_n=32, block_k=16, split_k=8)
  close(weight_only_matmul(x, w, config=config, interpret=True, platform=kernel),
        weight_only_reference(x, w), jnp.float32)


def test_reference_is_x_times_dequantized_weight(make_qarray, normal):
  w = make_qarray(5, 64, 8, bits=2, group_size=32, zero_point=True)
  x = normal((2, 64), seed=5)
  expected = np.asarray(x, np.float64) @ np.asarray(w.dequantize(), np.float64)
  np.testing.assert_allclose(weight_only_reference(x, w), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rank3_per_tensor_weight_is_viewed_as_matrix(normal, close, kernel):
  codes = jnp.asarray(np.random.default_rng(6).integers(-8, 8, size=(4, 16, 24)))
  w = QArray.from_codes(codes, 0.1, bits=4, signed=True)
  x = normal((3, 64), seed=6)
  close(weight_only_matmul(x, w, interpret=True, platform=kernel),
        x @ w.dequantize().reshape(64, 24), jnp.float32)


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
