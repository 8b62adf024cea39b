"""The decoder-only LM: shapes, causality, tied embeddings, Linen == NNX, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compressjax.models.lm import LM
from compressjax.models.lm_nnx import NnxLM, load_linen_params

SMALL = dict(width=16, depth=2, heads=4, max_len=12)


def _tokens(shape=(2, 12), seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256)


@pytest.fixture(scope="module", params=[False, True], ids=["head", "tied"])
def linen(request):
  model = LM(**SMALL, tie_embeddings=request.param)
  return model, model.init(jax.random.key(1), _tokens())


def test_shapes_and_parameter_names(linen):
  model, variables = linen
  logits = model.apply(variables, _tokens((3, 7)))
  assert logits.shape == (3, 7, 256) and logits.dtype == jnp.float32
  params = variables["params"]
  assert params["block1"]["attn"]["query"]["kernel"].shape == (16, 4, 4)
  assert params["block1"]["attn"]["out"]["kernel"].shape == (4, 4, 16)
  assert params["block0"]["mlp"]["fc1"]["kernel"].shape == (16, 64)
  assert ("head" in params) == (not model.tie_embeddings)


def test_tied_logits_are_the_final_features_times_the_embedding():
  model = LM(**SMALL, tie_embeddings=True)
  variables = model.init(jax.random.key(1), _tokens())
  logits, state = model.apply(variables, _tokens(), capture_intermediates=True,
                              mutable=["intermediates"])
  features = state["intermediates"]["final_norm"]["__call__"][0]
  np.testing.assert_allclose(logits, features @ variables["params"]["embed"]["embedding"].T,
                             rtol=1e-5, atol=1e-5)


def test_changing_a_future_token_leaves_past_logits_unchanged(linen):
  model, variables = linen
  tokens = _tokens()
  changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % 256)
  before, after = model.apply(variables, tokens), model.apply(variables, changed)
  np.testing.assert_array_equal(before[:, :8], after[:, :8])
  assert not np.allclose(before[:, 8:], after[:, 8:])


def test_nnx_matches_linen_after_copying_params(linen):
  model, variables = linen
  nnx_model = load_linen_params(NnxLM.from_linen(model, rngs=nnx.Rngs(7)), variables["params"])
  tokens = _tokens(seed=3)
  np.testing.assert_allclose(nnx_model(tokens), model.apply(variables, tokens), rtol=1e-5,
                             atol=1e-5)


def test_copy_into_a_different_config_names_the_path(linen):
  _, variables = linen
  with pytest.raises(ValueError, match="block0/mlp/fc1/kernel"):
    load_linen_params(NnxLM(**SMALL, mlp_dim=32, rngs=nnx.Rngs(0)), variables["params"])


def test_bad_config_and_input_errors():
  with pytest.raises(ValueError, match="width=18 must be divisible by heads=4"):
    LM(width=18, heads=4).init(jax.random.key(0), _tokens())
  with pytest.raises(ValueError, match="max_len=12"):
    LM(**SMALL).init(jax.random.key(0), _tokens((1, 13)))
