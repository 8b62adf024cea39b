"""Served == fake-quant for padded convolutions whose activation quantizer has a zero point.

Padded positions of the int8 conv hold code 0; with a zero point that is the value ``-zx * s``,
not the 0.0 the fake-quant conv pads with, so the served path adds the difference back.
"""

import flax.linen as nn
from flax import nnx
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


class OwnConv(nn.Module):
  """A user's conv layer: its own parameter name, ``lax.conv_general_dilated`` called directly
  (grouped, padded), as a scanned stack of three."""

  @nn.compact
  def __call__(self, x, _):
    w = self.param("filters", nn.initializers.lecun_normal(), (3, 3, 2, 4))
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), feature_group_count=2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y - 0.3, None


class ScannedOwnConvs(nn.Module):

  @nn.compact
  def __call__(self, x):
    stack = nn.scan(OwnConv, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
    return stack(name="stack")(x, None)[0]


class NNXOwnConvs(nnx.Module):
  """The same stack in NNX: one stacked parameter, a ``jax.lax.scan`` over it."""

  def __init__(self, filters):
    self.filters = nnx.Param(filters)

  def __call__(self, x):
    def body(h, w):
      y = jax.lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)), feature_group_count=2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y - 0.3, None

    return jax.lax.scan(body, x, self.filters.get_value())[0]


def test_custom_scanned_grouped_convs_serve_on_the_int8_path_linen_and_nnx():
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 6, 4)) - 0.5, jnp.float32)
  rules = [Rule(pattern=".", weight=LSQ(bits=4), act=LSQPlus(bits=4))]  # LSQ+: a zero point
  plain = ScannedOwnConvs()
  float_vars = plain.init(jax.random.key(0), x)
  model = cj.compress(plain, rules)
  variables = cj.init_from(model, float_vars, x)
  serving_model, serving_vars = cj.export(model, variables, x)
  weight = serving_vars["served"]["stack"]["filters"]["weight"]
  assert isinstance(weight, cj.QArray) and weight.packed.shape[0] == 3  # one stacked QArray
  assert {p for p, _ in serving_paths(serving_model, serving_vars, x).values()} == {"int8 conv"}
  np.testing.assert_allclose(serving_model.apply(serving_vars, x), model.apply(variables, x),
                             atol=1e-4)

  nnx_model = cj.compress(NNXOwnConvs(float_vars["params"]["stack"]["filters"]), rules, x)
  served_nnx = cj.export(nnx_model)
  np.testing.assert_allclose(served_nnx(x), nnx_model(x), atol=1e-4)
