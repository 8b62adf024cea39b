"""Clip levels, steps and signs from the init tensor; the non-finite policy (issue 14)."""

import math
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.core import Rule
from compressjax.quant import LSQ, PACT, SAT, Uniform
from compressjax.quant.pact import ALPHA_FALLBACK

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 16)).astype(np.float32)  # half negative
RELU = np.maximum(X, 0.0)
SIGNLESS = (lambda: PACT(bits=3, signed=None), lambda: LSQ(bits=3, kind="activation"),
            lambda: Uniform(bits=4, signed=None), lambda: Uniform(bits=4, signed=None,
                                                                 symmetric=False, dynamic=False))


def test_pact_alpha_is_the_999th_percentile_ignoring_nan_and_inf():
  x = RELU.copy()
  x[0, :3] = [np.nan, np.inf, -np.inf]
  finite = x[np.isfinite(x)]
  alpha = PACT(bits=2).init(x)[0]["alpha"]
  np.testing.assert_allclose(alpha, np.percentile(np.maximum(finite, 0), 99.9), rtol=1e-5)
  assert SAT(bits=2, kind="activation").init(x)[0]["alpha"] == alpha
  assert PACT(bits=2, alpha_init=6.0).init(x)[0]["alpha"] == 6.0
  np.testing.assert_allclose(PACT(bits=2, signed=True).init(X)[0]["alpha"],
                             np.percentile(np.abs(X), 99.9), rtol=1e-5)


@pytest.mark.parametrize("x", [np.zeros((4, 8), np.float32), np.full((4, 8), np.nan, np.float32)])
def test_init_falls_back_on_all_zero_or_nan_tensors(x):
  assert PACT(bits=2).init(x)[0]["alpha"] == ALPHA_FALLBACK
  assert LSQ(bits=2, kind="activation").init(x)[0]["step"] == 1.0
  assert LSQ(bits=4).init(x)[0]["step"] == 1.0


def test_lsq_step_is_the_paper_rule_over_finite_values():
  x = X.copy()
  x[1, 1] = np.nan
  finite = x[np.isfinite(x)]
  step = LSQ(bits=4).init(x)[0]["step"]  # weights: signed, Q_P = 7
  np.testing.assert_allclose(step, 2 * np.abs(finite).mean() / math.sqrt(7), rtol=1e-6)
  params, stats = LSQ(bits=4, kind="activation").init(RELU)  # unsigned from data, Q_P = 15
  assert int(stats["signed"]) == 0
  np.testing.assert_allclose(params["step"], 2 * RELU.mean() / math.sqrt(15), rtol=1e-6)


@pytest.mark.parametrize("make", SIGNLESS)
def test_sign_is_decided_at_init_and_kept_in_stats(make):
  q = make()
  for x, signed in ((X, 1), (RELU, 0)):
    params, stats = q.init(x)
    stats = q.update(x, params, stats)
    assert int(stats["signed"]) == signed
    y = np.asarray(q.fake(x, params, stats))
    assert (y < 0).any() == bool(signed)
    codes = q.quantize(x, params, stats)
    assert (codes.lo, codes.hi) == (0, 2**q.bits - 1)  # static ranges: signs via zero points
    np.testing.assert_allclose((codes.codes - codes.zero_point) * codes.scale, y, atol=1e-6)
    assert codes.codes.min() >= 0 and codes.codes.max() <= 2**q.bits - 1
    np.testing.assert_allclose(q.export(x, params, stats).dequantize(), y, atol=1e-6)
    jitted = jax.jit(q.fake)(x, params, stats)  # the decision is an array: fine under jit
    np.testing.assert_allclose(jitted, y, atol=1e-6)


def test_explicit_sign_overrides_and_unsigned_clipping_warns():
  with pytest.warns(UserWarning, match=r"clips 5\d% of its calibration inputs \(negative\)"):
    _, stats = LSQ(bits=4, kind="activation", signed=False).init(X)
  assert stats == {}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert LSQ(bits=4, kind="activation", signed=True).init(RELU)[1] == {}
    PACT(bits=4).init(RELU)  # unsigned, nothing negative: no warning
    jax.jit(lambda x: PACT(bits=4).init(x))(X)  # traced values are not checked


def test_signed_decision_reaches_the_core_state_and_the_integer_export():
  rules = [Rule(pattern=".", weight=LSQ(bits=8), act=LSQ(bits=8, kind="activation"))]
  model = cj.compress(nn.Dense(4), rules)
  variables = model.init(jax.random.PRNGKey(0), X)
  assert int(variables["quant_stats"]["kernel"]["input"]["signed"]) == 1
  serving, serving_vars = cj.export(model, variables, X)
  np.testing.assert_allclose(serving.apply(serving_vars, X), model.apply(variables, X),
                             rtol=1e-4, atol=1e-4)


def test_dynamic_ranges_ignore_non_finite_examples_and_nan_stays_nan():
  q = Uniform(bits=4)
  bad = X.copy()
  bad[0, 0], bad[1, 1], bad[2, 2] = np.nan, np.inf, -np.inf
  y, clean = np.asarray(q.fake(bad, {}, {})), np.asarray(q.fake(X[3:], {}, {}))
  assert np.isnan(y[0, 0]) and np.isfinite(np.delete(y.ravel(), 0)).all()
  # The scale comes from the finite values only: other examples quantize as without the bad ones
  # (X[3:] holds the batch's absmax, as in X).
  assert np.abs(X[3:]).max() == np.abs(np.where(np.isfinite(bad), bad, 0)).max()
  np.testing.assert_array_equal(y[3:], clean)
  for make in (lambda: PACT(bits=4), lambda: LSQ(bits=4, kind="activation")):
    quantizer = make()
    params, stats = quantizer.init(RELU)
    x = RELU.copy()
    x[5, 7] = np.nan
    out = np.asarray(quantizer.fake(x, params, stats))
    assert np.isnan(out[5, 7]) and np.isnan(out).sum() == 1


@pytest.mark.parametrize("q,key", [(LSQ(bits=4), "step"), (PACT(bits=4), "alpha")])
def test_nan_step_or_clip_refuses_to_export(q, key):
  params, stats = q.init(RELU)
  params = {**params, key: jnp.asarray(np.nan, jnp.float32)}
  with pytest.raises(ValueError, match=f"{key}=nan is not finite"):
    q.export(RELU, params, stats)
