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
