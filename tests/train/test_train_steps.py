"""Step builders: mutable collections, pluggable losses, masked evaluation, dropout rng."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax.models import CNN, MLP
from compressjax.train import (ArraySplit, apply_model, create_train_state, cross_entropy,
                               evaluate, make_eval_step, make_train_step, step_rng)

RNG = np.random.default_rng(0)
BATCH = {"image": RNG.normal(size=(8, 8, 8, 1)).astype(np.float32),
         "label": RNG.integers(0, 10, 8).astype(np.int32)}


CNN_MODEL, ADAM = CNN(widths=(4, 8), hidden=16), optax.adam(1e-2)


def _state(model, optimizer):
  return create_train_state(model, optimizer, jnp.zeros((1, 8, 8, 1)), jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def cnn_state():
  return _state(CNN_MODEL, ADAM)


def test_train_step_updates_params_batch_stats_and_step(cnn_state):
  state = cnn_state
  assert set(state.model_state) == {"batch_stats"}
  step = make_train_step(CNN_MODEL, ADAM)
  new, metrics = step(state, BATCH)
  assert int(new.step) == 1 and set(metrics) == {"loss", "accuracy"}
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.model_state,
                         new.model_state)
  assert all(jax.tree.leaves(changed))  # running statistics moved
  losses = [float(metrics["loss"])]
  for _ in range(15):
    new, metrics = step(new, BATCH)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_model_without_extra_collections_and_extra_loss_outputs():
  model, optimizer = MLP(features=(16,)), optax.sgd(0.1)
  state = _state(model, optimizer)
  assert state.model_state == {}

  def loss_fn(logits, labels):
    ce = cross_entropy(logits, labels)
    return ce + 0.0 * jnp.mean(logits**2), {"ce": ce, "logit_l2": jnp.mean(logits**2)}

  new, metrics = make_train_step(model, optimizer, loss_fn)(state, BATCH)
  assert set(metrics) == {"loss", "accuracy", "ce", "logit_l2"}
  np.testing.assert_allclose(metrics["ce"], metrics["loss"], rtol=1e-6)
  assert new.model_state == {}


class DropoutNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x.reshape((x.shape[0], -1))))


def test_dropout_rng_changes_with_step_and_is_reproducible():
  model = DropoutNet()
  state = _state(model, optax.sgd(0.0))
  run = jax.jit(lambda s: apply_model(model, s.params, s.model_state, BATCH["image"],
                                      train=True, rng=step_rng(s))[0])
  np.testing.assert_array_equal(run(state), run(state))
  assert not np.array_equal(run(state), run(state.replace(step=state.step + 1)))


def test_masked_evaluation_equals_plain_mean(cnn_state):
  model, state = CNN_MODEL, cnn_state
  x = RNG.normal(size=(11, 8, 8, 1)).astype(np.float32)
  y = RNG.integers(0, 10, 11).astype(np.int32)
  got = evaluate(make_eval_step(model), state, ArraySplit(x, y), batch_size=4)  # 4+4+3 padded
  logits = jax.jit(model.apply)(state.variables, x)
  np.testing.assert_allclose(got["loss"], cross_entropy(logits, y), rtol=1e-5)
  np.testing.assert_allclose(got["accuracy"], np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
