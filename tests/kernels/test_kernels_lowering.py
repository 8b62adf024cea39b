"""The kernels lower to Triton (GPU) and Mosaic (TPU) IR from this CPU host.

Lowering runs the Pallas -> Triton/Mosaic translation (unsupported primitives, non-power-of-two
Triton tensors, block-shape rules); compiling and running the IR needs the device itself.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from compressjax.kernels import default_config, quantize_rows, w8a8_matmul, weight_only_matmul

TARGETS = [("gpu", "cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")]


def _lower(fn, *args, lowering):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(lowering,)).as_text()


@pytest.mark.parametrize("platform, lowering, call", TARGETS)
@pytest.mark.parametrize("bits, group_size, zero_point, dtype, m", [
    (4, 128, False, jnp.bfloat16, 1),
    (2, None, True, jnp.float32, 48),
    (8, 32, True, jnp.bfloat16, 16),
])
def test_weight_only_lowers(make_qarray, platform, lowering, call, bits, group_size, zero_point,
                            dtype, m):
  w = make_qarray(0, 1024, 512, bits=bits, group_size=group_size, zero_point=zero_point)
  config = default_config(platform, m, 512, w.packed.shape[0], group=group_size)
  fn = functools.partial(weight_only_matmul, config=config, platform=platform)
  text = _lower(fn, jax.ShapeDtypeStruct((m, 1024), dtype), w, lowering=lowering)
  assert call in text


@pytest.mark.parametrize("platform, lowering, call", TARGETS)
def test_w8a8_lowers(make_qarray, platform, lowering, call):
  w = make_qarray(0, 1024, 512, bits=8)
  config = default_config(platform, 16, 512, 1024)

  def fn(x, w):
    x_q, x_scale = quantize_rows(x)
    return w8a8_matmul(x_q, x_scale, w.packed, w.scale, w_offset=128, config=config,
                       platform=platform)

  assert call in _lower(fn, jax.ShapeDtypeStruct((16, 1024), jnp.bfloat16), w, lowering=lowering)
