"""Uniform quantizer: calibration rules, static running ranges, grids."""

import jax.numpy as jnp
import numpy as np

from compressjax.quant import PER_CHANNEL, Uniform


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
