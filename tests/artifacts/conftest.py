"""Exported serving models shared by the artifact tests (built once: export is the slow part)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.models import CNN, MLP
from compressjax.quant import granularity as gr
from compressjax.quant.lsq import LSQ

N = 200  # batch of the example input: the artifacts' static input shape and the check's inputs


class Mixer(nn.Module):
  """A user layer with its own parameters, a batched einsum and a gated nonlinearity."""

  heads: int = 4
  out: int = 6

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], self.heads, -1)
    w = self.param("w", nn.initializers.lecun_normal(), (self.heads, x.shape[-1], self.out))
    gain = self.param("gain", nn.initializers.ones, (self.out,))
    y = jnp.einsum("bhi,hio->bho", x, w) * gain
    return (jnp.tanh(y) * jax.nn.sigmoid(y)).reshape(x.shape[0], -1)


class EinsumNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(10, name="head")(Mixer(name="mixer")(x))


def _served(model, w_bits, a_bits):
  x = jax.random.normal(jax.random.key(0), (N, 8, 8, 1))
  float_vars = model.init(jax.random.key(1), x)
  act = None if a_bits is None else LSQ(bits=a_bits, kind="activation", signed=True)
  rules = [cj.Rule(pattern=".", weight=LSQ(bits=w_bits, granularity=gr.PER_CHANNEL), act=act)]
  qmodel = cj.compress(model, rules)
  variables = cj.init_from(qmodel, float_vars, x, train=False)
  serving_model, serving_vars = cj.export(qmodel, variables, x)
  expected = np.asarray(jax.jit(serving_model.apply)(serving_vars, x))
  return dict(model=model, float_vars=float_vars, serving_model=serving_model,
              serving_vars=serving_vars, x=x, expected=expected)


@pytest.fixture(scope="session")
def w8a8_cnn():
  """The digits-like CNN, W8A8 (LSQ per-channel weights, LSQ activations)."""
  return _served(CNN(widths=(8, 16), hidden=32), 8, 8)


@pytest.fixture(scope="session")
def w8a8_einsum():
  return _served(EinsumNet(), 8, 8)


@pytest.fixture(scope="session")
def w4a4_mlp():
  return _served(MLP(features=(64, 32)), 4, 4)


@pytest.fixture(scope="session")
def w4a16_mlp():
  """Weight-only 4-bit: every site is served on the kernel path (float activations)."""
  return _served(MLP(features=(64, 32)), 4, None)
