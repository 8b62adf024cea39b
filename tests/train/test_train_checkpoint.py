"""Checkpoints: round trip, retention, variables for later steps, clear mismatch errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax.models import MLP
from compressjax.train import Checkpoints, create_train_state, load_checkpoint, restore_variables

X = jnp.zeros((1, 8, 8, 1))


def _state(features):
  return create_train_state(MLP(features=features), optax.sgd(0.1, momentum=0.9), X,
                            jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def initial():
  return _state((8,))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, initial):
  workdir = tmp_path_factory.mktemp("ckpt")
  state = initial
  checkpoints = Checkpoints(str(workdir), max_to_keep=2)
  for step in (1, 2, 3):
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    checkpoints.save(state, {"epoch": step})
  checkpoints.wait()
  assert sorted(checkpoints.manager.all_steps()) == [2, 3]
  checkpoints.close()
  return str(workdir), state


def test_round_trip(saved, initial):
  workdir, state = saved
  restored, meta = load_checkpoint(workdir, initial)
  assert meta == {"epoch": 3}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert np.array_equal(a, b)
  variables = restore_variables(workdir)
  assert set(variables) == {"params"}
  np.testing.assert_array_equal(variables["params"]["head"]["kernel"],
                                state.params["head"]["kernel"])


def test_other_widths_fail_with_paths_and_shapes(saved):
  workdir, _ = saved
  with pytest.raises(ValueError) as info:
    load_checkpoint(workdir, jax.eval_shape(lambda: _state((6,))))
  message = str(info.value)
  assert "\n" not in message and "is from another model: first difference" in message
  assert "first difference params/dense0/bias: checkpoint (8,) vs model (6,)" in message
  assert "params/dense0/kernel: checkpoint (64, 8) vs model (64, 6)" in message
  assert "params/head/kernel: checkpoint (8, 10) vs model (6, 10)" in message


def test_other_architecture_fails_for_variables_too(saved):
  workdir, _ = saved
  like = jax.eval_shape(MLP(features=(8, 8)).init, jax.random.PRNGKey(0), X)
  with pytest.raises(ValueError, match="params/dense1/bias: checkpoint missing vs model \\(8,\\)"):
    restore_variables(workdir, like=like)


def test_missing_checkpoints(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoints in"):
    restore_variables(str(tmp_path))
