"""Served == fake-quant for padded convolutions whose activation quantizer has a zero point.

Padded positions of the int8 conv hold code 0; with a zero point that is the value ``-zx * s``,
not the 0.0 the fake-quant conv pads with, so the served path adds the difference back.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.core import Rule
from compressjax.export import serving_paths
from compressjax.quant import LSQ, PACT, DoReFa, LSQPlus


class PaddedConv(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Conv(3, (3, 3), padding="SAME", use_bias=False)(x)


@pytest.mark.parametrize("act", [PACT(bits=2, signed=None), LSQ(bits=3, kind="activation"),
                                 LSQPlus(bits=2)], ids=["pact_calibrated_sign", "lsq", "lsq_plus"])
@pytest.mark.parametrize("weight", [DoReFa(bits=2), LSQ(bits=4)], ids=["dorefa", "lsq"])
def test_served_equals_fake_quant_on_padded_conv_with_zero_point(act, weight):
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5, 5, 2)) - 0.5, jnp.float32)
  model = cj.compress(PaddedConv(), [Rule(pattern=".", weight=weight, act=act)])
  variables = cj.init_from(model, PaddedConv().init(jax.random.key(0), x), x)
  serving_model, serving_vars = cj.export(model, variables, x)
  np.testing.assert_allclose(serving_model.apply(serving_vars, x), model.apply(variables, x),
                             atol=1e-4)


class GroupedStridedDepthwise(nn.Module):
  """Padding with feature groups, strides and dilation, then a padded depthwise conv."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), strides=2, kernel_dilation=2, padding=((2, 1), (1, 2)),
                feature_group_count=2, use_bias=False, name="grouped")(x)
    return nn.Conv(4, (3, 3), padding="SAME", feature_group_count=4, name="depthwise")(x)


def test_padding_correction_with_groups_strides_and_dilation():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 9, 9, 4)) - 0.5, jnp.float32)
  rules = [Rule(pattern=".", weight=LSQ(bits=4), act=PACT(bits=3, signed=None))]
  plain = GroupedStridedDepthwise()
  model = cj.compress(plain, rules)
  variables = cj.init_from(model, plain.init(jax.random.key(0), x), x)
  serving_model, serving_vars = cj.export(model, variables, x)
  paths = serving_paths(serving_model, serving_vars, x)
  assert {p for p, _ in paths.values()} == {"int8 conv"}, paths
  np.testing.assert_allclose(serving_model.apply(serving_vars, x), model.apply(variables, x),
                             atol=1e-4)
  # A NaN pixel of one feature group: NaN in the same outputs (that group's channels only).
  bad = x.at[0, 4, 5, 1].set(jnp.nan)  # a sampled pixel (odd columns: left pad 1, stride 2)
  served, fake = serving_model.apply(serving_vars, bad), model.apply(variables, bad)
  np.testing.assert_array_equal(np.isnan(served), np.isnan(fake))
  assert np.isnan(served[0]).any() and not np.isnan(served[0, ..., 2:]).any()
