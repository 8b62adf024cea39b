import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax import prune
from compressjax.core.matching import UnusedRuleWarning
from compressjax.models import CNN

MODEL = CNN(widths=(4, 6), hidden=8, num_classes=3)


def variables_with_gammas(g0, g1):
  shapes = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))))
  v = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)
  v["params"]["bn0"]["scale"] = np.asarray(g0, np.float32)
  v["params"]["bn1"]["scale"] = np.asarray(g1, np.float32)
  return v


def test_penalty_adds_s_sign_gamma_to_bn_scales_only():
  params = {"bn": {"scale": jnp.array([2.0, -1.0, 0.0]), "bias": jnp.ones(3)},
            "conv": {"kernel": -jnp.ones((2, 2))}}
  tx = prune.slimming_penalty(1e-2)
  grads = jax.tree.map(jnp.zeros_like, params)
  out, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(out["bn"]["scale"], [1e-2, -1e-2, 0.0])
  np.testing.assert_array_equal(out["bn"]["bias"], 0.0)
  np.testing.assert_array_equal(out["conv"]["kernel"], 0.0)


def test_penalty_before_sgd_shrinks_gammas_towards_zero():
  params = {"bn": {"scale": jnp.array([0.5, -0.5]), "bias": jnp.zeros(2)}}
  tx = optax.chain(prune.slimming_penalty(0.1), optax.sgd(1.0))
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, u)
  np.testing.assert_allclose(params["bn"]["scale"], [0.2, -0.2], atol=1e-6)


def test_penalty_rules_and_bad_s():
  params = {"bn0": {"scale": jnp.ones(2)}, "bn1": {"scale": jnp.ones(2)}}
  tx = prune.slimming_penalty(1.0, layers=prune.slimming_rules(MODEL))
  out, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_array_equal(out["bn1"]["scale"], 1.0)
  with pytest.warns(UnusedRuleWarning):
    prune.slimming_penalty(1.0, layers=[prune.Rule("nothing")]).init(params)
  with pytest.raises(ValueError, match="s must be >= 0"):
    prune.slimming_penalty(-1.0)


def test_one_global_threshold_over_all_gammas():
  v = variables_with_gammas([0.1, 0.9, 0.05, 0.8], [0.3, 0.01, 0.7, 0.6, 0.02, 0.5])
  keep = prune.slimming_keep(MODEL, v, 0.5)  # 10 channels, prune the 5 smallest
  np.testing.assert_array_equal(keep["conv0"], [1, 3])
  np.testing.assert_array_equal(keep["conv1"], [2, 3, 5])
  assert "hidden" not in keep


def test_min_channels_keeps_the_best_of_a_dying_layer():
  v = variables_with_gammas([0.01, 0.02, 0.03, 0.04], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
  keep = prune.slimming_keep(MODEL, v, 0.5)
  np.testing.assert_array_equal(keep["conv0"], [3])
  keep = prune.slimming_keep(MODEL, v, 0.5, min_channels=2, prune_dense=True)
  np.testing.assert_array_equal(keep["conv0"], [2, 3])
  assert keep["hidden"].size == 4
  with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
    prune.slimming_keep(MODEL, v, 1.0)
