"""MLP and digits CNN: module paths, widths as fields, input sizes."""

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from compressjax.models import CNN, MLP


def _shapes(model, x):
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  return {"/".join(k): v.shape for k, v in flatten_dict(params).items()}


def test_mlp_paths_and_widths():
  shapes = _shapes(MLP(features=(32, 16, 8), num_classes=5), jnp.zeros((2, 4, 4, 2)))
  assert shapes == {
      "dense0/kernel": (32, 32), "dense0/bias": (32,),
      "dense1/kernel": (32, 16), "dense1/bias": (16,),
      "dense2/kernel": (16, 8), "dense2/bias": (8,),
      "head/kernel": (8, 5), "head/bias": (5,),
  }


def test_cnn_paths_and_digits_shapes():
  shapes = _shapes(CNN(), jnp.zeros((2, 8, 8, 1)))
  assert shapes == {
      "conv0/kernel": (3, 3, 1, 32), "bn0/scale": (32,), "bn0/bias": (32,),
      "conv1/kernel": (3, 3, 32, 64), "bn1/scale": (64,), "bn1/bias": (64,),
      "hidden/kernel": (2 * 2 * 64, 128), "hidden/bias": (128,),
      "head/kernel": (128, 10), "head/bias": (10,),
  }


@pytest.mark.parametrize("hw,channels,flat", [(28, 1, 7 * 7 * 24), (32, 3, 8 * 8 * 24)])
def test_cnn_other_input_sizes_and_widths(hw, channels, flat):
  model = CNN(widths=(12, 24), hidden=20, num_classes=4)
  shapes = _shapes(model, jnp.zeros((2, hw, hw, channels)))
  assert shapes["conv0/kernel"] == (3, 3, channels, 12)
  assert shapes["conv1/kernel"] == (3, 3, 12, 24)
  assert shapes["hidden/kernel"] == (flat, 20)
  x = jnp.zeros((2, hw, hw, channels))
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0]
  assert out.shape == (2, 4)
