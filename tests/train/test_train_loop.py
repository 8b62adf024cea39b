"""fit: same seed same numbers, bit-identical resume, logs and guards."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax.train import (ArraySplit, TrainConfig, create_train_state, fit, make_eval_step,
                               make_train_step, read_metrics, steps_per_epoch)


class TinyNet(nn.Module):
  """Dense + BatchNorm + Dropout: exercises mutable collections and the dropout rng."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(8)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
    return nn.Dense(3)(x)


def _data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 3, n).astype(np.int32)
  x = (rng.normal(size=(n, 2, 2, 1)) + y[:, None, None, None]).astype(np.float32)
  return ArraySplit(x, y)


TRAIN, TEST = _data(40, 0), _data(12, 1)
CFG = TrainConfig(epochs=2, batch_size=8, seed=0, log_every_steps=2, progress=False)
MODEL = TinyNet()
OPT = optax.sgd(0.1, momentum=0.9)
TRAIN_STEP, EVAL_STEP = make_train_step(MODEL, OPT), make_eval_step(MODEL)


_INIT = {}


def _run(workdir, cfg=CFG, **kwargs):
  if cfg.seed not in _INIT:  # one (compiled) initialisation per seed
    _INIT[cfg.seed] = create_train_state(MODEL, OPT, jnp.zeros((1, 2, 2, 1)),
                                         jax.random.PRNGKey(cfg.seed))
  return fit(_INIT[cfg.seed], TRAIN_STEP, TRAIN, cfg, workdir=str(workdir), eval_step=EVAL_STEP,
             eval_data=TEST, **kwargs)


def _assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    assert np.array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  return _run(workdir), workdir


def test_same_seed_same_numbers(reference, tmp_path):
  result, _ = reference
  again = _run(tmp_path)
  _assert_same_state(result.state, again.state)
  assert int(again.state.step) == 2 * steps_per_epoch(40, 8) == result.total_steps
  assert result.eval_metrics == again.eval_metrics
  assert set(result.eval_metrics) == {"loss", "accuracy"}


def test_other_seed_other_numbers(reference, tmp_path):
  other = _run(tmp_path, cfg=TrainConfig(**{**CFG.__dict__, "seed": 1}))
  assert not np.array_equal(other.state.params["Dense_0"]["kernel"],
                            reference[0].state.params["Dense_0"]["kernel"])


def test_killed_run_resumes_bit_identically(reference, tmp_path):
  result, reference_dir = reference
  spe = steps_per_epoch(40, 8)
  stopped = _run(tmp_path, stop_after_steps=spe + 2)  # 2 steps past the epoch-1 checkpoint
  assert int(stopped.state.step) == spe + 2
  resumed = _run(tmp_path)
  assert resumed.start_step == spe
  _assert_same_state(result.state, resumed.state)  # params, batch_stats, opt_state, step, rng
  assert resumed.eval_metrics == result.eval_metrics
  records = lambda d: [(r["split"], r["step"], r.get("loss")) for r in read_metrics(str(d))]
  assert records(tmp_path) == records(reference_dir)
  assert {"train", "eval"} == {r[0] for r in records(tmp_path)}


def test_finished_run_restarts_without_training(reference):
  result, reference_dir = reference
  again = _run(reference_dir)
  assert again.start_step == result.total_steps
  _assert_same_state(result.state, again.state)
  assert again.eval_metrics == result.eval_metrics


def test_resume_with_other_batch_size_is_refused(reference):
  _, reference_dir = reference
  cfg = TrainConfig(**{**CFG.__dict__, "batch_size": 4})
  with pytest.raises(ValueError, match=r"cannot resume .*batch_size=8 \(now 4\)"):
    _run(reference_dir, cfg=cfg)


def test_steps_override_epochs_and_eval_every_steps(tmp_path):
  cfg = TrainConfig(**{**CFG.__dict__, "steps": 7, "eval_every_steps": 3,
                       "eval_every_epochs": None, "log_every_steps": 100})
  result = _run(tmp_path, cfg=cfg)
  assert int(result.state.step) == 7 == result.total_steps
  log = read_metrics(str(tmp_path))
  assert [r["step"] for r in log if r["split"] == "eval"] == [3, 6, 7]
  assert [r["step"] for r in log if r["split"] == "train"] == [5, 7]  # epoch end, run end
  assert [r["epoch"] for r in log] == [0.6, 1.0, 1.2, 1.4, 1.4]
