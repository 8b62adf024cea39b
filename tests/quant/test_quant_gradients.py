"""Closed forms from METHODS.md: LSQ/LSQ+ step and offset gradients, PACT's calibrated
gradient, SAT's variance rule and modified grid, F8Net's fractional length and EMA.

Inputs come from seeded numpy generators and each check runs as one jitted function, which
keeps compilation (the main cost of JAX tests on CPU) small.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant import LSQ, PACT, PER_CHANNEL, PER_TENSOR, SAT, FixedPoint, LSQPlus, ste
from compressjax.quant.dorefa import tanh_to_unit
from compressjax.quant.fixed_point import fractional_length


def _normal(seed, shape, std=1.0):
  return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


def _lsq_step_closed_form(u, q_n, q_p):
  """d v^/d s of LSQ before the gradient scale, with u = v / s."""
  return np.where(u <= -q_n, -q_n, np.where(u >= q_p, q_p, -u + np.round(u)))


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (3, False)])
def test_lsq_step_gradient_equals_closed_form(bits, signed):
  q = LSQ(bits=bits, signed=signed)
  v, s = _normal(bits, (64,), 2.0), np.float32(0.3)
  jac, gx = jax.jit(
      lambda v, s: (
          jax.jacobian(lambda s: q.fake(v, {"step": s}, {}))(s),
          jax.grad(lambda v: q.fake(v, {"step": s}, {}).sum())(v),
      )
  )(v, s)
  u = v / s
  assert (u <= -q.q_n).any() and (u >= q.q_p).any() and (np.abs(u) < q.q_p).any()
  g = 1.0 / math.sqrt(64 * q.q_p)
  np.testing.assert_allclose(jac, g * _lsq_step_closed_form(u, q.q_n, q.q_p), rtol=1e-5, atol=1e-6)
  # The input gradient is straight-through inside the range and masked outside it.
  np.testing.assert_array_equal(gx, ((u > -q.q_n) & (u < q.q_p)).astype(np.float32))


def test_lsq_per_channel_step_gradient_uses_per_channel_n():
  q = LSQ(bits=3, granularity=PER_CHANNEL)
  v, ct = _normal(1, (16, 3)), _normal(2, (16, 3))
  s = np.array([[0.2, 0.5, 1.0]], np.float32)
  grad = jax.jit(jax.grad(lambda s: (q.fake(v, {"step": s}, {}) * ct).sum()))(s)
  expected = (ct * _lsq_step_closed_form(v / s, q.q_n, q.q_p)).sum(0) / math.sqrt(16 * q.q_p)
  np.testing.assert_allclose(grad[0], expected, rtol=1e-5, atol=1e-6)


def test_lsq_init_and_gradient_scales():
  w = _normal(3, (32, 8))
  params, _ = LSQ(bits=4).init(w)
  np.testing.assert_allclose(params["step"], 2 * np.abs(w).mean() / math.sqrt(7), rtol=1e-6)
  # Activations: N = features per sample (the batch axis does not count).
  act = LSQ(bits=4, signed=False, kind="activation")
  assert act.grad_scale_of((128, 10)) == pytest.approx(1 / math.sqrt(10 * 15))
  assert LSQ(bits=4, granularity=PER_CHANNEL).grad_scale_of((32, 8)) == pytest.approx(
      1 / math.sqrt(32 * 7)
  )


def test_lsq_plus_offset_and_step_gradients_equal_closed_form():
  q = LSQPlus(bits=3)
  x = _normal(4, (48,), 1.5)
  params = {"step": np.float32(0.25), "offset": np.float32(-0.4)}
  jac = jax.jit(jax.jacobian(lambda p: q.fake(x, p, {})))(params)
  u = (x - params["offset"]) / params["step"]
  clipped = (u <= 0) | (u >= 7)
  assert clipped.any() and (~clipped).any()
  g = 1.0 / math.sqrt(48 * 7)
  np.testing.assert_allclose(jac["offset"], g * clipped, atol=1e-6)
  np.testing.assert_allclose(jac["step"], g * _lsq_step_closed_form(u, 0, 7), rtol=1e-5, atol=1e-6)
  init, _ = q.init(x)
  np.testing.assert_allclose(init["step"], (x.max() - x.min()) / 7, rtol=1e-6)
  np.testing.assert_allclose(init["offset"], x.min(), rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 4])
def test_pact_alpha_gradient_is_the_calibrated_gradient(bits):
  q = PACT(bits=bits)
  alpha = np.float32(2.0)
  x = np.concatenate([np.linspace(-1.0, 3.0, 41), [0.3, 1.1, 2.0, 2.5]]).astype(np.float32)
  x = x + np.float32(1e-3)  # keep off the exact bounds 0 and alpha
  jac, gx = jax.jit(
      lambda x, a: (
          jax.jacobian(lambda a: q.fake(x, {"alpha": a}, {}))(a),
          jax.grad(lambda x: q.fake(x, {"alpha": a}, {}).sum())(x),
      )
  )(x, alpha)
  n = 2**bits - 1
  u = x / alpha
  expected = np.where(u >= 1, 1.0, np.where(u <= 0, 0.0, np.round(u * n) / n - u))
  np.testing.assert_allclose(jac, expected, atol=2e-6)
  np.testing.assert_array_equal(gx, ((u > 0) & (u < 1)).astype(np.float32))
  assert PACT(alpha_init=8.0).init(x)[0]["alpha"] == 8.0
  with pytest.warns(UserWarning, match="clips 22% of its calibration inputs"):
    alpha0 = PACT().init(x)[0]["alpha"]  # from data: the 99.9th percentile of max(x, 0)
  np.testing.assert_allclose(alpha0, np.percentile(np.maximum(x, 0), 99.9), rtol=1e-6)


@pytest.mark.parametrize("grid", ["modified", "centered"])
@pytest.mark.parametrize("shape,n_out", [((64, 10), 10), ((3, 3, 8, 16), 16 * 9)])
def test_sat_variance_rule(grid, shape, n_out):
  w, ct = _normal(5, shape, 0.1), _normal(6, shape)
  q, q_fan = SAT(bits=4, grid=grid), SAT(bits=4, grid=grid, fan_out=7)

  def unscaled(w):  # Q in [-1, 1] before the variance rule, with a straight-through floor
    f = ste.floor_ste(16 * tanh_to_unit(w, PER_TENSOR))
    codes = jnp.where(f < 0, 0.0, jnp.where(f > 15, 15.0, f))
    return 2 * (codes + (grid == "centered") / 2) / 16 - 1

  @jax.jit
  def run(w):
    grad = lambda f: jax.grad(lambda w: (f(w) * ct).sum())(w)
    fake = lambda w: q.fake(w, {}, {})
    return fake(w), q_fan.fake(w, {}, {}), unscaled(w), grad(fake), grad(unscaled)

  y, y_fan, unscaled_w, g_sat, g_ref = run(w)
  np.testing.assert_allclose(np.var(y) * n_out, 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.var(y_fan) * 7, 1.0, rtol=1e-5)
  # std(Q) is under stop_gradient: values and weight gradient are the unscaled ones times r.
  r = 1 / (math.sqrt(n_out) * float(np.std(unscaled_w)))
  np.testing.assert_allclose(y, r * unscaled_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_sat, r * g_ref, rtol=1e-4, atol=1e-6)


def test_sat_modified_and_centered_grids():
  w = _normal(7, (32, 8))
  c4 = SAT(bits=4).export(w, {}, {}).codes()
  c3 = SAT(bits=3).export(w, {}, {}).codes()
  np.testing.assert_array_equal(c3, c4 // 2)  # a lower-bit grid drops the low bits
  q = np.unique(np.asarray(SAT(bits=2, grid="centered").fake(w, {}, {})))
  np.testing.assert_allclose(q, -q[::-1], rtol=1e-6)  # centered grid is symmetric about 0


def test_sat_activations_are_pact():
  x = np.linspace(-1.0, 12.0, 27, dtype=np.float32)
  sat, pact = SAT(bits=3, kind="activation"), PACT(bits=3)
  p, _ = sat.init(x)
  np.testing.assert_array_equal(sat.fake(x, p, {}), pact.fake(x, p, {}))


def test_f8net_fractional_length_formula():
  sigma = np.array([1e-4, 0.01, 0.2, 0.5, 1.0, 3.0, 40.0, 100.0], np.float32)
  for signed, c in [(True, 40.0), (False, 70.0)]:
    expected = np.clip(np.floor(np.log2(c / sigma)), 0, 8 - signed)
    np.testing.assert_array_equal(fractional_length(sigma, signed), expected)
  w = _normal(8, (64, 4), 0.3)
  fl = np.clip(np.floor(np.log2(40.0 / w.std())), 0, 7)
  assert float(FixedPoint().export(w, {}, {}).scale[0, 0]) == 2.0**-fl
  per_ch = FixedPoint(granularity=PER_CHANNEL).export(w, {}, {})
  fl_ch = np.clip(np.floor(np.log2(40 / w.std(0))), 0, 7)
  np.testing.assert_array_equal(per_ch.scale[0], 2.0**-fl_ch)


def test_f8net_clip_and_masked_gradient():
  q = FixedPoint()  # FL from std; big outliers are clipped at +-127 / 2^FL
  x = np.concatenate([_normal(9, (62,)), [50.0, -50.0]]).astype(np.float32)
  y, gx = jax.jit(lambda x: (q.fake(x, {}, {}), jax.grad(lambda x: q.fake(x, {}, {}).sum())(x)))(x)
  scale = float(q.export(x, {}, {}).scale[0, 0])
  np.testing.assert_allclose(y[-2:], [127 * scale, -127 * scale])
  np.testing.assert_array_equal(gx, (np.abs(x / scale) < 127).astype(np.float32))


def test_f8net_activation_fl_is_an_ema():
  q = FixedPoint(kind="activation", signed=False)
  a = _normal(10, (128,))
  params, stats = q.init(a)
  stats = q.update(a * 0.01, params, stats)  # the first batch is taken as is
  fl1 = float(fractional_length(np.std(a * 0.01), False))
  assert float(stats["fl"]) == fl1
  stats = q.update(a * 4.0, params, stats)
  fl2 = float(fractional_length(np.std(a * 4.0), False))
  np.testing.assert_allclose(stats["fl"], 0.1 * fl2 + 0.9 * fl1, rtol=1e-6)
  assert float(q.export(a, params, stats).scale[0, 0]) == 2.0 ** -np.round(0.1 * fl2 + 0.9 * fl1)
