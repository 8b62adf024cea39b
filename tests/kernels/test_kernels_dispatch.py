"""The dispatcher: forced backends agree, jit works, heuristics and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.kernels import BACKENDS, PALLAS_MAX_M, choose_backend, default_config, matmul
from compressjax.qarray import QArray


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forced_backends_agree_weight_only(make_qarray, normal, close, dtype):
  w = make_qarray(0, 256, 40, bits=4, group_size=32, zero_point=True)
  x = normal((2, 3, 256), dtype)  # leading batch axes are flattened and restored
  outs = {b: matmul(x, w, backend=b) for b in ("xla", "interpret", "reference")}
  for backend, y in outs.items():
    assert y.shape == (2, 3, 40) and y.dtype == dtype, backend
    close(y, outs["reference"], dtype)


def test_forced_backends_agree_w8a8(make_qarray, normal, close):
  w = make_qarray(1, 192, 40, bits=8)
  x = normal((3, 192))
  outs = {b: matmul(x, w, backend=b, act_bits=8) for b in ("xla", "interpret", "reference")}
  for y in outs.values():
    close(y, outs["reference"], jnp.float32)
  # Per-token int8 activations stay close to the float product (quantization error only).
  exact = matmul(x, w, backend="reference")
  err = np.abs(np.asarray(outs["reference"] - exact)).max() / np.abs(np.asarray(exact)).max()
  assert err < 2e-2


def test_jit_of_dispatcher(make_qarray, normal, close):
  w = make_qarray(2, 128, 24, bits=2, group_size=64)
  x = normal((5, 128), jnp.bfloat16)
  fn = jax.jit(matmul, static_argnames=("backend", "act_bits", "out_dtype"))
  y = fn(x, w, out_dtype=jnp.float32)
  assert y.dtype == jnp.float32
  close(y, matmul(x, w, backend="reference", out_dtype=jnp.float32), jnp.bfloat16)
  close(fn(x, w, backend="interpret"), matmul(x, w, backend="xla"), jnp.bfloat16)


def test_float_weight_is_a_plain_dot(normal, close):
  x, w = normal((3, 16)), normal((16, 4), seed=1)
  for backend in (None,) + BACKENDS:
    close(matmul(x, w, backend=backend), np.asarray(x) @ np.asarray(w), jnp.float32)


def test_sixteen_bit_weights_run_on_xla(make_qarray, normal, close):
  w = make_qarray(3, 64, 8, bits=12, group_size=32)
  x = normal((2, 64))
  assert choose_backend(2, w, platform="gpu") == "xla"
  close(matmul(x, w), matmul(x, w, backend="reference"), jnp.float32)


class TestHeuristics:

  def test_cpu_is_always_xla(self, make_qarray):
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    assert choose_backend(1, w, platform="cpu") == "xla"
    assert choose_backend(1, w) == "xla"  # this machine

  def test_gpu_small_m_pallas_large_m_xla(self, make_qarray):
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    assert choose_backend(1, w, platform="gpu") == "pallas"
    assert choose_backend(PALLAS_MAX_M["gpu"], w, platform="gpu") == "pallas"
    assert choose_backend(PALLAS_MAX_M["gpu"] + 1, w, platform="gpu") == "xla"

  def test_gpu_needs_power_of_two_groups(self, make_qarray):
    w = make_qarray(0, 192, 64, bits=4, group_size=48)
    assert choose_backend(1, w, platform="gpu") == "xla"

  def test_tpu_needs_lane_aligned_n(self, make_qarray):
    assert choose_backend(8, make_qarray(0, 256, 256, bits=4), platform="tpu") == "pallas"
    assert choose_backend(8, make_qarray(0, 256, 40, bits=4), platform="tpu") == "xla"

  def test_w8a8_needs_signed_per_channel_int8(self, make_qarray):
    w8 = make_qarray(0, 256, 64, bits=8)
    assert choose_backend(4, w8, act_bits=8, platform="gpu") == "pallas"
    grouped = make_qarray(0, 256, 64, bits=8, group_size=64)
    assert choose_backend(4, grouped, act_bits=8, platform="gpu") == "xla"

  @pytest.mark.parametrize("m", [1, 16, 64, 512])
  @pytest.mark.parametrize("k, n", [(4096, 11008), (11008, 4096)])
  def test_gpu_tiles_divide_llm_shapes(self, m, k, n):
    rows = k // 2  # packed rows of a 4-bit weight
    config = default_config("gpu", m, n, rows, group=128)
    assert n % config.block_n == 0 and rows % (config.block_k * config.split_k) == 0
    assert 16 <= config.block_m <= 64 and config.block_k % 128 == 0


class TestBadInput:

  def test_unknown_backend(self, make_qarray, normal):
    with pytest.raises(ValueError, match="backend='cuda' is not one of"):
      matmul(normal((2, 64)), make_qarray(0, 64, 8, bits=4), backend="cuda")

  def test_act_bits(self, make_qarray, normal):
    with pytest.raises(ValueError, match="act_bits=4 is not allowed"):
      matmul(normal((2, 64)), make_qarray(0, 64, 8, bits=4), act_bits=4)

  def test_int_activations(self, make_qarray):
    with pytest.raises(TypeError, match="x must be a float array.*int32"):
      matmul(jnp.ones((2, 64), jnp.int32), make_qarray(0, 64, 8, bits=4))

  def test_k_mismatch(self, make_qarray, normal):
    with pytest.raises(ValueError, match=r"K=48 .*K=64 \(weight shape \(64, 8\)\)"):
      matmul(normal((2, 48)), make_qarray(0, 64, 8, bits=4))

  def test_w8a8_with_4bit_weight(self, make_qarray, normal):
    with pytest.raises(ValueError, match="act_bits=8.*bits=4"):
      matmul(normal((2, 64)), make_qarray(0, 64, 8, bits=4), act_bits=8)

  def test_w8a8_with_float_weight(self, normal):
    with pytest.raises(TypeError, match="act_bits=8 needs w to be a signed 8-bit QArray"):
      matmul(normal((2, 64)), normal((64, 8)), act_bits=8)

  def test_group_size_not_dividing_k(self, make_qarray, normal):
    w = make_qarray(0, 64, 8, bits=4, group_size=32)
    bad = QArray(w.packed, w.scale, None, 4, True, w.shape, 24)
    for backend in ("xla", "reference", "interpret"):
      with pytest.raises(ValueError, match="group_size=24 must be a positive divisor of K=64"):
        matmul(normal((2, 64)), bad, backend=backend)

  def test_pallas_on_cpu(self, make_qarray, normal):
    with pytest.raises(ValueError, match="backend='interpret'"):
      matmul(normal((2, 64)), make_qarray(0, 64, 8, bits=4), backend="pallas")
