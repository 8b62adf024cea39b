"""Recipes with every layer quantized: the network input goes through LSQ+ for every method."""

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.core import discover
from compressjax.models import CNN
from compressjax.quant import LSQPlus
from compressjax.quant.recipes import METHODS, recipe, recipe_rules


@pytest.mark.parametrize("method", [m for m in METHODS if m != "uniform"])
def test_every_layer_first_input_is_lsq_plus_and_the_rest_the_methods_own(method):
  sites = discover(CNN(widths=(4,), hidden=8), jnp.zeros((1, 8, 8, 1)), train=False)
  rules = recipe_rules(method, sites, w_bits=2, a_bits=3, edge_bits=None)
  weight, act = recipe(method, 2, 3)
  assert rules[0].pattern == f"^{sites[0].name}$"
  assert rules[0].act == LSQPlus(bits=3) and rules[0].weight == weight
  assert [r.act for r in rules[1:]] == [act, act]


def test_lsq_plus_keeps_an_asymmetric_input_background_exact():
  # Standardised digits: background -0.81, strokes up to ~3; at 2 bits the min/max init puts
  # the background on a grid point (a symmetric [-a, a] grid would round it to 0).
  x = jnp.asarray(np.r_[np.full(90, -0.81), np.linspace(0.0, 3.0, 10)], jnp.float32)[:, None]
  q = LSQPlus(bits=2)
  params, stats = q.init(x)
  stats = q.update(x, params, stats)
  np.testing.assert_allclose(q.fake(x, params, stats)[:90], -0.81, atol=1e-5)
