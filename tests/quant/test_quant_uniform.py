"""Uniform quantizer: calibration rules, static running ranges, grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant import PER_CHANNEL, Uniform, per_group
from xla_test_flags import default_codegen_rerun, in_default_codegen


def _calibrate(q, batches):
  params, stats = q.init(batches[0])
  for b in batches:
    stats = q.update(b, params, stats)
  return params, stats


def test_static_running_minmax_and_ema():
  batches = [jnp.array([-1.0, 0.5]), jnp.array([-0.5, 3.0]), jnp.array([-0.2, 0.1])]
  _, stats = _calibrate(Uniform(dynamic=False, symmetric=False, calibration="minmax"), batches)
  assert (float(stats["lo"]), float(stats["hi"]), int(stats["count"])) == (-1.0, 3.0, 3)
  _, stats = _calibrate(
      Uniform(dynamic=False, symmetric=False, calibration="minmax", ema_decay=0.5), batches
  )
  # 0.5 old + 0.5 new: lo -1 -> -0.75 -> -0.475, hi 0.5 -> 1.75 -> 0.925.
  np.testing.assert_allclose([stats["lo"], stats["hi"]], [-0.475, 0.925], rtol=1e-6)


def test_static_per_channel_ranges_and_asymmetric_grid():
  q = Uniform(bits=4, dynamic=False, symmetric=False, signed=False, calibration="minmax",
              granularity=PER_CHANNEL)
  x = jnp.array([[0.0, -2.0], [3.0, 1.0], [1.2, 0.0]])
  params, stats = _calibrate(q, [x])
  assert stats["lo"].shape == (1, 2)
  y = q.fake(x, params, stats)
  qa = q.export(x, params, stats)
  np.testing.assert_allclose(qa.scale, [[3.0 / 15, 3.0 / 15]])
  np.testing.assert_allclose(qa.zero_point, [[0.0, 10.0]])
  np.testing.assert_allclose(y, x, atol=1e-6)  # these values sit on the grid; 0 is exact


def test_percentile_ignores_an_outlier_and_clips_it():
  x = jnp.concatenate([jnp.linspace(-1.0, 1.0, 999), jnp.array([100.0])])
  y = Uniform(bits=8, calibration="percentile", percentile=99.0).fake(x, {}, {})
  assert float(y.max()) < 1.5 and float(y[-1]) == float(y.max())
  y_absmax = Uniform(bits=8).fake(x, {}, {})
  assert float(y_absmax[-1]) == 100.0


def test_symmetric_grids():
  x = jnp.linspace(-1.0, 1.0, 101)
  signed = np.unique(np.asarray(Uniform(bits=3).fake(x, {}, {})))
  np.testing.assert_allclose(signed, np.arange(-3, 4) / 3, rtol=1e-6)  # narrow, symmetric
  unsigned = np.unique(np.asarray(Uniform(bits=2, signed=False).fake(x, {}, {})))
  np.testing.assert_allclose(unsigned, np.arange(4) / 3, rtol=1e-6)  # negatives clip to 0


@pytest.mark.parametrize("q", [
    Uniform(bits=8, symmetric=False, signed=False),  # absmax: lo == -hi, lo / scale on a tie
    Uniform(bits=4, symmetric=False, signed=None),
    Uniform(bits=4, symmetric=False, granularity=PER_CHANNEL),
    Uniform(bits=3, symmetric=False, calibration="minmax"),
    Uniform(bits=4, symmetric=False, calibration="percentile", percentile=99.0),
    Uniform(bits=4, granularity=per_group(8)),
    Uniform(bits=8),
], ids=repr)
def test_jitted_and_eager_export_agree_bit_for_bit(q):
  """XLA compiles ``v / broadcast(scale)`` as ``v * (1 / scale)`` in an eager op but not inside
  a fusion; the grid must not depend on it (export is compiled, the fake-quant forward eager).
  A property of XLA's default code generation: runs in its subprocess (below)."""
  if not in_default_codegen():
    pytest.skip("runs under XLA's default code generation: test_bit_for_bit_under_default_codegen")
  fields = lambda a: [a.packed, a.scale] + ([] if a.zero_point is None else [a.zero_point])
  stacked_export = jax.vmap(q.export, (0, None, None))  # a scanned stack's, compiled vmapped
  compiled = jax.jit(q.export), jax.jit(q.fake), jax.jit(stacked_export)  # compiled once
  for seed in range(8):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((64, 32)) + 0.3, jnp.float32)
    params, stats = q.init(x)
    eager, fused = q.export(x, params, stats), compiled[0](x, params, stats)
    for e, f in zip(fields(eager), fields(fused)):
      np.testing.assert_array_equal(e, f)
    np.testing.assert_array_equal(q.fake(x, params, stats), compiled[1](x, params, stats))
    np.testing.assert_array_equal(eager.dequantize(), q.fake(x, params, stats))
    stacked = jnp.stack([x, -x])
    for e, f in zip(fields(stacked_export(stacked, params, stats)),
                    fields(compiled[2](stacked, params, stats))):
      np.testing.assert_array_equal(e, f)


def test_bit_for_bit_under_default_codegen():
  default_codegen_rerun("tests/quant/test_quant_uniform.py::"
                        "test_jitted_and_eager_export_agree_bit_for_bit")
