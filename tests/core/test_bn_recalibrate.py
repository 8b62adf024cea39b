"""Init-from-float recomputes BatchNorm statistics under the compressed weights (Linen and NNX)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.tree_paths import flat_paths, get_path
from compressjax.quant import PACT, SAT, DoReFa

WEIGHTS = {"sat": SAT(bits=2, kind="weight"), "dorefa": DoReFa(bits=2, kind="weight")}


class ConvBNNet(nn.Module):
  """Not a zoo model: BatchNorm built with its mode at construction and at the call."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.99)(x))
    x = nn.Dense(5, use_bias=False)(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(momentum=0.9)(x, use_running_average=not train)


def _batch():
  return jnp.asarray(np.random.default_rng(0).standard_normal((32, 6, 6, 2)), jnp.float32)


def _rules(method):
  return [Rule(pattern=".", weight=WEIGHTS[method], act=PACT(bits=4, signed=True))]


@pytest.mark.parametrize("method", sorted(WEIGHTS))
def test_linen_eval_outputs_equal_batch_normalised_outputs_on_init_batch(method):
  x = _batch()
  float_vars = ConvBNNet().init(jax.random.key(0), x)
  model = cj.compress(ConvBNNet(), _rules(method))
  variables = cj.init_from(model, float_vars, x, train=False)
  train_out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(model.apply(variables, x), train_out, atol=2e-5)
  stale = cj.init_from(model, float_vars, x, train=False, recalibrate_bn=False)
  assert float(jnp.abs(model.apply(stale, x) - train_out).max()) > 0.1
  # the float kernels come back as the very arrays given (a large model is not held twice)
  for v in (variables, stale):
    for name, leaf in flat_paths(float_vars["params"]):
      assert get_path(v["params"], name) is leaf, name


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 6, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(6, momentum=0.99, rngs=rngs)
    self.dense = nnx.Linear(216, 5, use_bias=False, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.conv(x)))
    return self.dense(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("method", sorted(WEIGHTS))
def test_nnx_eval_outputs_equal_batch_normalised_outputs_on_init_batch(method):
  x = _batch()
  net = NNXNet(nnx.Rngs(0))
  net.eval()
  compressed = cj.compress(net, _rules(method), x)
  compressed.eval()
  eval_out = compressed(x)
  compressed.train()
  compressed.use_running_average = True  # site statistics as initialised; BatchNorm on the batch
  np.testing.assert_allclose(eval_out, compressed(x), atol=2e-5)


def test_recalibrate_bn_rejects_non_bool():
  x = _batch()
  model = cj.compress(ConvBNNet(), _rules("sat"))
  with pytest.raises(TypeError, match="recalibrate_bn='yes'"):
    cj.init_from(model, ConvBNNet().init(jax.random.key(0), x), x, recalibrate_bn="yes")
