"""The kernels lower to Triton (GPU) and Mosaic (TPU) IR from this CPU host.

Lowering runs the Pallas -> Triton/Mosaic translation (unsupported primitives, non-power-of-two
Triton tensors, block-shape rules); compiling and running the IR needs the device itself
(``benchmarks/gpu_check.sh``). Weights are abstract (``ShapeDtypeStruct``), so LLM shapes cost
nothing to build.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from compressjax.kernels import _weight_only_tpu
from compressjax.kernels import (BlockConfig, default_config, quantize_rows, w8a8_matmul,
                                 weight_only_matmul)
from compressjax.qarray import QArray, codes_per_byte, padded_rows

TARGETS = [("gpu", "cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")]


def _lower(fn, *args, lowering):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(lowering,)).as_text()


def abstract_qarray(k, n, *, bits, group_size=None, zero_point=False):
  """A QArray of ShapeDtypeStructs with the packed layout's shapes."""
  rows = k // group_size if group_size else 1
  packed = jax.ShapeDtypeStruct(
      (padded_rows(k, bits, group_size) // codes_per_byte(bits), n), jnp.uint8)
  param = jax.ShapeDtypeStruct((rows, n), jnp.float32)
  return QArray(packed, param, param if zero_point else None, bits, True, (k, n), group_size)


@pytest.mark.parametrize("platform, lowering, call", TARGETS)
@pytest.mark.parametrize("bits, group_size, zero_point", [
    (2, None, True), (2, 64, False), (2, 128, True),
    (4, None, False), (4, 64, True), (4, 128, False),
    (8, None, True), (8, 64, False), (8, 128, True),
])
@pytest.mark.parametrize("m, dtype", [(1, jnp.bfloat16), (256, jnp.float32)])
def test_weight_only_lowers_every_combination(platform, lowering, call, bits, group_size,
                                              zero_point, m, dtype):
  # K=11008 (ragged for 2-bit groups of 128: planes padded past K), N=4096; default tiles.
  w = abstract_qarray(11008, 4096, bits=bits, group_size=group_size, zero_point=zero_point)
  config = default_config(platform, m, 4096, w.packed.shape[0], group=group_size)
  fn = functools.partial(weight_only_matmul, config=config, platform=platform)
  assert call in _lower(fn, jax.ShapeDtypeStruct((m, 11008), dtype), w, lowering=lowering)


@pytest.mark.parametrize("config", [BlockConfig(16, 32, 128, 5, num_warps=4, num_stages=4),
                                    BlockConfig(64, 64, 64, 3), BlockConfig(128, 128, 32)])
def test_triton_split_tails_and_tile_variants(config):
  # 43 K blocks in 5 splits (9+9+9+9+7), weight-tile scales at block_m=64/128 > group 32.
  w = abstract_qarray(11008, 4096, bits=4, group_size=32, zero_point=True)
  fn = functools.partial(weight_only_matmul, config=config, platform="gpu")
  text = _lower(fn, jax.ShapeDtypeStruct((3, 11008), jnp.bfloat16), w, lowering="cuda")
  assert "__gpu$xla.gpu.triton" in text


def test_mosaic_k_axis_is_arbitrary(monkeypatch):
  calls = []
  real = _weight_only_tpu.pl.pallas_call
  monkeypatch.setattr(_weight_only_tpu.pl, "pallas_call",
                      lambda *a, **kw: calls.append(kw) or real(*a, **kw))
  w = abstract_qarray(4096, 4096, bits=4, group_size=128)
  fn = functools.partial(weight_only_matmul, config=default_config("tpu", 8, 4096, 2048),
                         platform="tpu")
  assert "tpu_custom_call" in _lower(fn, jax.ShapeDtypeStruct((8, 4096), jnp.bfloat16), w,
                                     lowering="tpu")
  [kw] = calls
  assert kw["compiler_params"].dimension_semantics == ("parallel", "parallel", "arbitrary")
  assert kw["grid_spec"].grid == (1, 16, 2)  # K blocks of 1024 packed rows (8 groups of 128)


@pytest.mark.parametrize("platform, lowering, call", TARGETS)
def test_w8a8_lowers(platform, lowering, call):
  w = abstract_qarray(1024, 512, bits=8)
  config = default_config(platform, 16, 512, 1024)

  def fn(x, w):
    x_q, x_scale = quantize_rows(x)
    return w8a8_matmul(x_q, x_scale, w.packed, w.scale, w_offset=128, config=config,
                       platform=platform)

  assert call in _lower(fn, jax.ShapeDtypeStruct((16, 1024), jnp.bfloat16), w, lowering=lowering)
