"""Mesh, sharding rules, per-process batches and the weight-decay mask, on 1 device."""

import jax
import numpy as np
import optax
import pytest

from compressjax.models import MLP
from compressjax.train import (ArraySplit, MeshConfig, TrainConfig, create_train_state,
                               decay_mask, fit, make_train_step)
from compressjax.train.global_batches import ProcessRows
from compressjax.train.mesh import make_mesh, mesh_shape
from compressjax.train.sharding import fsdp_axis


@pytest.mark.parametrize("shape, fsdp, axis", [
    ((3, 3, 8, 16), 2, 3),  # largest divisible axis
    ((3, 3, 64, 64), 4, 3),  # ties: the last (output channels)
    ((30, 64), 4, 1),  # 30 is not divisible by 4
    ((9, 9, 3), 2, None),  # nothing divisible
    ((8,), 2, None),  # below min_size
    ((3, 3, 8, 16), 1, None),  # no fsdp axis
])
def test_fsdp_axis(shape, fsdp, axis):
  assert fsdp_axis(shape, fsdp, min_size=64) == axis


def test_mesh_shapes_and_errors():
  assert mesh_shape(MeshConfig(), 8) == (8, 1)
  assert mesh_shape(MeshConfig(fsdp=2), 8) == (4, 2)
  assert mesh_shape(MeshConfig(data=2, fsdp=2), 8) == (2, 2)  # the first 4 devices
  with pytest.raises(ValueError, match=r"data=4 x fsdp=4 needs 16 devices but only 8"):
    mesh_shape(MeshConfig(data=4, fsdp=4), 8)
  with pytest.raises(ValueError, match=r"fsdp=3 does not divide the 8 devices"):
    mesh_shape(MeshConfig(fsdp=3), 8)
  with pytest.raises(ValueError, match=r"sizes must be >= 1"):
    mesh_shape(MeshConfig(data=0), 8)
  mesh = make_mesh(MeshConfig())
  assert mesh.axis_names == ("data", "fsdp") and mesh.devices.shape == (1, 1)


def test_fit_on_a_mesh_larger_than_the_devices_fails_before_training(tmp_path):
  model, tx = MLP(features=(4,)), optax.sgd(0.1)
  state = create_train_state(model, tx, np.zeros((1, 2, 2, 1), np.float32),
                             jax.random.PRNGKey(0))
  data = ArraySplit(np.zeros((8, 2, 2, 1), np.float32), np.zeros(8, np.int32))
  cfg = TrainConfig(steps=1, batch_size=4, mesh=MeshConfig(data=2), progress=False)
  with pytest.raises(ValueError, match=r"^train.mesh data=2 x fsdp=1 needs 2 devices but only 1"):
    fit(state, make_train_step(model, tx), data, cfg, workdir=str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_process_rows_split_every_batch_between_processes():
  x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
  data = ArraySplit(x, np.arange(10, dtype=np.int32))
  views = [ProcessRows(data, 4, i, 2) for i in (0, 1)]
  order = np.array([7, 3, 9, 0])
  parts = [v.take(order)[1] for v in views]
  np.testing.assert_array_equal(np.concatenate(parts), order)
  assert [len(p) for p in parts] == [2, 2]
  short = [v.take(np.array([5]))[0] for v in views]  # last batch of 1 row: process 1 has none
  assert short[0].shape == (1, 1, 1, 1) and short[1].shape == (0, 1, 1, 1)
  assert short[1].dtype == np.float32 and len(views[1]) == 10


def test_no_weight_decay_on_quantizer_parameters():
  params = {"conv": {"kernel": np.ones((3, 3, 1, 4)), "bias": np.ones(4)},
            "compressjax": {"conv": {"kernel": {"weight": {"step": np.ones((1, 1, 1, 4))},
                                                "input": {"alpha": np.ones(())}}}}}
  assert decay_mask(params) == {
      "conv": {"kernel": True, "bias": False},
      "compressjax": {"conv": {"kernel": {"weight": {"step": False}, "input": {"alpha": False}}}}}
