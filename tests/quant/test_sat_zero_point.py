"""SAT's mean-free zero point (``zero_point="mean"``): same codes, weights of mean 0, served ==
fake-quant; and why: the paper's modified grid adds one shared feature to every channel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax.core as cc
from compressjax.export import export, serving_paths
from compressjax.models import CNN
from compressjax.quant.recipes import recipe_rules
from compressjax.quant.sat import SAT


def _normal(seed, shape, std=1.0):
  return std * jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_mean_zero_point_keeps_the_codes_and_removes_the_mean(bits):
  w = _normal(0, (3, 3, 8, 16), 0.1)
  grid, mean = SAT(bits=bits), SAT(bits=bits, zero_point="mean")
  q_grid, q_mean = grid.export(w, {}, {}), mean.export(w, {}, {})
  np.testing.assert_array_equal(q_mean.codes(), q_grid.codes())  # the modified grid's codes
  codes = np.asarray(q_grid.codes(), np.float64)
  np.testing.assert_allclose(float(q_mean.zero_point[0, 0]), codes.mean(), rtol=1e-6)
  fake = np.asarray(mean.fake(w, {}, {}))
  assert abs(fake.mean()) < 1e-6 * np.abs(fake).max()
  # The grid's values are the same ones shifted by (mean(codes) - 2^(b-1)) * scale, not 0.
  shift = (codes.mean() - 2 ** (bits - 1)) * float(q_grid.scale[0, 0])
  assert abs(shift) > 0.05 * np.std(fake)
  np.testing.assert_allclose(np.asarray(grid.fake(w, {}, {})) - fake, shift, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.var(fake) * 16 * 9, 1.0, rtol=1e-5)  # the variance rule holds
  np.testing.assert_allclose(q_mean.dequantize(), fake, rtol=1e-5, atol=1e-7)


def test_mean_zero_point_has_the_grid_gradient():
  # The mean is under stop_gradient and std is shift-invariant: the same STE gradient.
  w, ct = _normal(1, (64, 10), 0.1), _normal(2, (64, 10))
  grad = lambda q: jax.grad(lambda w: (q.fake(w, {}, {}) * ct).sum())(w)
  np.testing.assert_allclose(grad(SAT(bits=2, zero_point="mean")), grad(SAT(bits=2)),
                             rtol=1e-5, atol=1e-7)


def test_modified_grid_makes_channels_alike_on_post_relu_inputs_and_the_mean_does_not():
  # Small weights land on Q in {-2^(1-b), 0}: a mean shift that sums over non-negative inputs
  # (here correlated, as feature maps are) into one feature shared by every output channel
  # (issue 14's collapse). Measured: 0.98 (grid), 0.09 (mean), 0.11 (the float weights).
  w = _normal(3, (288, 64), 0.05)
  x = jax.nn.relu(_normal(4, (2000, 288)) + 0.5 * _normal(5, (2000, 1)))

  def mean_abs_corr(w_eff):
    c = np.corrcoef(np.asarray(x @ w_eff).T)
    return np.abs(c[~np.eye(64, dtype=bool)]).mean()

  assert mean_abs_corr(SAT(bits=2).fake(w, {}, {})) > 0.9
  assert mean_abs_corr(SAT(bits=2, zero_point="mean").fake(w, {}, {})) < 1.2 * mean_abs_corr(w)


def test_sat_recipe_every_layer_serves_what_fake_quant_computes():
  model = CNN(widths=(4, 8), hidden=8)
  x = _normal(5, (6, 8, 8, 1))
  sites = cc.discover(model, x[:1], train=False)
  rules = recipe_rules("sat", sites, w_bits=2, a_bits=2, edge_bits=None)
  assert {r.weight.zero_point for r in rules} == {"mean"}
  qmodel = cc.compress(model, rules)
  variables = qmodel.init(jax.random.key(0), x)
  serving_model, serving_vars = export(qmodel, variables, x[:1])
  expected = qmodel.apply(variables, x)
  served = jax.jit(serving_model.apply)(serving_vars, x)
  assert float(jnp.max(jnp.abs(expected - served))) <= 1e-5 * float(jnp.max(jnp.abs(expected)))
  paths = serving_paths(serving_model, serving_vars, x[:1])
  assert paths["conv1/kernel"][0] == "int8 conv" and paths["hidden/kernel"][0] == "int8 dot"


def test_bad_zero_point_names_the_value():
  with pytest.raises(ValueError, match="zero_point='channel'.*'grid', 'mean'"):
    SAT(zero_point="channel")
