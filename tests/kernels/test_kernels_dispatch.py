"""The dispatcher: forced backends agree, jit works, table-driven choices and input errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.kernels import (BACKENDS, BlockConfig, choose_backend, default_config, find_table,
                                 load_table, matmul, save_table, tables, tiles)
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
  close(matmul(x, w), matmul(x, w, backend="reference"), jnp.float32)


def _table(tmp_path, entries, device="Test GPU 9000", platform="gpu"):
  """Writes a synthetic measured table as JSON and loads it back (the sweep's output format)."""
  path = tmp_path / "table.json"
  path.write_text(json.dumps({"format": tables.FORMAT, "device_kind": device,
                              "platform": platform, "jax": jax.__version__,
                              "entries": entries}))
  return load_table(path)


def _entry(m, us, **kw):
  base = dict(kind="weight_only", bits=4, group=64, zero_point=False, m=m, k=256, n=64, us=us,
              config=dict(block_m=16, block_n=32, block_k=64, split_k=2))
  return base | kw


class TestChoice:

  def test_cpu_is_always_xla(self, make_qarray):
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    assert choose_backend(1, w, platform="cpu") == "xla"
    backend, reason = choose_backend(1, w, explain=True)  # this machine
    assert backend == "xla" and "platform 'cpu'" in reason

  @pytest.mark.parametrize("platform", ["gpu", "tpu"])
  def test_no_measured_table_means_xla(self, make_qarray, platform):
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    backend, reason = choose_backend(1, w, platform=platform, device_kind="NVIDIA H200",
                                     explain=True)
    assert backend == "xla" and reason == "no measured table for NVIDIA H200; XLA"
    assert choose_backend(1, w, platform=platform, explain=True)[1] == (
        f"no measured table for {platform}; XLA")

  def test_table_picks_the_fastest_and_its_tiles(self, make_qarray, tmp_path):
    table = _table(tmp_path, [
        _entry(1, {"bf16": 9.0, "xla": 20.0, "pallas": 3.0}),
        _entry(16, {"bf16": 9.5, "xla": 20.0, "pallas": 12.0}),  # slower than bf16
        _entry(64, {"bf16": 10.0, "xla": 9.0, "pallas": 8.0}),
    ])
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    backend, reason = choose_backend(1, w, platform="gpu", table=table, explain=True)
    assert backend == "pallas"
    assert "measured at M=1" in reason and "pallas 3.0 us" in reason and "'Test GPU 9000'" in reason
    # M=4 rounds up to the M=16 entry, where Pallas lost to the bf16 dot: never picked.
    backend, reason = choose_backend(4, w, platform="gpu", table=table, explain=True)
    assert backend == "xla" and "measured at M=16" in reason and "not faster" in reason
    assert choose_backend(64, w, platform="gpu", table=table) == "pallas"
    backend, reason = choose_backend(65, w, platform="gpu", table=table, explain=True)
    assert backend == "xla" and "no entry" in reason and "M >= 65" in reason
    entry = table.lookup("weight_only", 4, 64, False, 1, 256, 64)
    assert entry.config == BlockConfig(16, 32, 64, 2)

  def test_table_keys_on_the_weight(self, make_qarray, tmp_path):
    table = _table(tmp_path, [_entry(16, {"bf16": 9.0, "xla": 20.0, "pallas": 3.0})])
    assert choose_backend(8, make_qarray(0, 256, 64, bits=4, group_size=64), platform="gpu",
                          table=table) == "pallas"
    for other in (make_qarray(0, 256, 64, bits=2, group_size=64),
                  make_qarray(0, 256, 64, bits=4, group_size=128),
                  make_qarray(0, 256, 64, bits=4, group_size=64, zero_point=True),
                  make_qarray(0, 256, 128, bits=4, group_size=64)):
      assert choose_backend(8, other, platform="gpu", table=table) == "xla"

  def test_w8a8_entries(self, make_qarray, tmp_path):
    table = _table(tmp_path, [_entry(16, {"bf16": 9.0, "xla": 8.0, "pallas": 4.0}, kind="w8a8",
                                     bits=8, group=None)])
    w8 = make_qarray(0, 256, 64, bits=8)
    assert choose_backend(16, w8, act_bits=8, platform="gpu", table=table) == "pallas"
    assert choose_backend(16, w8, platform="gpu", table=table) == "xla"  # weight-only: no entry
    grouped = make_qarray(0, 256, 64, bits=8, group_size=64)
    backend, reason = choose_backend(16, grouped, act_bits=8, platform="gpu", table=table,
                                     explain=True)
    assert backend == "xla" and "W8A8 kernel needs" in reason

  def test_unreadable_weights_go_to_xla_first(self, make_qarray, tmp_path):
    table = _table(tmp_path, [_entry(16, {"xla": 20.0, "pallas": 3.0}, bits=12)])
    backend, reason = choose_backend(1, make_qarray(3, 256, 64, bits=12, group_size=64),
                                     platform="gpu", table=table, explain=True)
    assert backend == "xla" and "uint16" in reason
    backend, reason = choose_backend(1, make_qarray(0, 192, 64, bits=4, group_size=48),
                                     platform="gpu", table=table, explain=True)
    assert backend == "xla" and "group size 48 is not a power of two" in reason

  def test_committed_table_is_found_by_device_kind(self, make_qarray, tmp_path):
    table = _table(tmp_path, [_entry(16, {"bf16": 9.0, "xla": 20.0, "pallas": 3.0})])
    save_table(table, tables.table_path("Test GPU 9000", tmp_path))
    assert (tmp_path / "test_gpu_9000.json").exists()
    assert find_table("Test GPU 9000", tmp_path) == table
    assert find_table("Other GPU", tmp_path) is None

  def test_matmul_explains_and_uses_the_table(self, make_qarray, normal, close, tmp_path):
    table = _table(tmp_path, [_entry(16, {"bf16": 9.0, "xla": 20.0, "pallas": 3.0})],
                   device="cpu", platform="cpu")
    w = make_qarray(0, 256, 64, bits=4, group_size=64)
    x = normal((2, 256))
    y, reason = matmul(x, w, table=table, explain=True)
    assert "platform 'cpu'" in reason  # a table never sends CPU to an interpreted kernel
    close(y, matmul(x, w, backend="reference"), jnp.float32)
    y, reason = matmul(x, w, backend="interpret", explain=True)
    assert reason == "backend='interpret' forced by the caller"
    close(y, matmul(x, w, backend="reference"), jnp.float32)

  @pytest.mark.parametrize("bad, match", [
      ({"format": "other/9"}, "format='other/9'"),
      ({"entries": [{"kind": "w4"}]}, "entry 0: missing fields"),
      ({"entries": [_entry(1, {"xla": 1.0}, kind="conv")]}, "kind='conv' is not one of"),
      ({"entries": [_entry(1, {"xla": -1.0})]}, "positive microseconds"),
  ])
  def test_loader_names_the_bad_field(self, tmp_path, bad, match):
    data = {"format": tables.FORMAT, "device_kind": "d", "platform": "gpu", "entries": []} | bad
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match):
      load_table(path)

  @pytest.mark.parametrize("m", [1, 16, 64, 512])
  @pytest.mark.parametrize("k, n", [(4096, 11008), (11008, 4096)])
  def test_default_gpu_tiles(self, m, k, n):
    rows = k // 2  # packed rows of a 4-bit weight
    config = default_config("gpu", m, n, rows, group=128)
    assert 16 <= config.block_m <= 128 and config.block_k % 128 == 0
    assert config.block_n >= tiles.MIN_BLOCK_N
    programs = -(-m // config.block_m) * -(-n // config.block_n) * config.split_k
    assert programs >= 66 or config.split_k == rows // config.block_k // tiles.MIN_STEPS
    assert rows // config.block_k // config.split_k >= tiles.MIN_STEPS


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
