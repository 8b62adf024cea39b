"""Mesh, sharding rules, per-process batches, mesh config and QAT from a config, on 1 device."""

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import optax
import pytest

from compressjax.cli import main
from compressjax.config import (Config, MeshConfig, TrainConfig, apply_overrides,
                                config_from_dict, get_config, load_config, save_config)
from compressjax.data import ArraySplit
from compressjax.models import MLP
from compressjax.train import (Checkpoints, create_train_state, decay_mask, evaluate_workdir,
                               fit, make_train_step, param_count, setup)
from compressjax.train.classifier import _claim_workdir, train_classifier
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


def test_mesh_quant_and_prefetch_overrides():
  cfg = apply_overrides(Config(), ["train.mesh.data=4", "train.mesh.fsdp=2",
                                   "train.mesh.fsdp_min_size=1024", "train.distributed=true",
                                   "train.prefetch=0", "quant.method=sat", "quant.w_bits=3",
                                   "quant.init_from=runs/float"])
  assert cfg.train.mesh == MeshConfig(data=4, fsdp=2, fsdp_min_size=1024)
  assert cfg.train.distributed and cfg.train.prefetch == 0
  assert (cfg.quant.method, cfg.quant.w_bits, cfg.quant.init_from) == ("sat", 3, "runs/float")
  for override, message in [
      ("train.mesh.data=0", "bad value for train.mesh.data: 0 (must be"),
      ("train.mesh.fsdp=0", "bad value for train.mesh.fsdp: 0 (must be > 0)"),
      ("train.prefetch=-1", "bad value for train.prefetch: -1 (must be >= 0)"),
      ("quant.a_bits=0", "bad value for quant.a_bits: 0 (must be > 0)")]:
    with pytest.raises(ValueError) as info:
      apply_overrides(Config(), [override])
    assert str(info.value).startswith(message)


def test_resume_may_change_the_mesh_but_not_the_math(tmp_path):
  cfg = get_config("digits_cnn")
  _claim_workdir(cfg, str(tmp_path))
  other_mesh = apply_overrides(cfg, ["train.mesh.fsdp=2", "train.prefetch=4"])
  _claim_workdir(other_mesh, str(tmp_path))  # accepted
  with pytest.raises(ValueError, match=r"optim.lr: 0.05 -> 0.1"):
    _claim_workdir(apply_overrides(cfg, ["optim.lr=0.1"]), str(tmp_path))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_cli_mesh_errors_are_one_line_and_leave_no_run(capsys, tmp_path, data_dir):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as info:
    main(["train", "--config", "digits_cnn", "--workdir", str(workdir), "--set",
          f"data.data_dir={data_dir}", "--set", "train.mesh.data=2"])
  err = capsys.readouterr().err.strip().splitlines()
  assert info.value.code == 2 and err == [
      "compressjax: error: train.mesh data=2 x fsdp=1 needs 2 devices but only 1 are available"]
  assert not workdir.exists()


def test_train_honours_the_quant_section(tmp_path, data_dir):
  """QAT from a float run's checkpoint through the config (what `compressjax train` runs), then
  eval of the QAT run from its saved config."""
  common = [f"data.data_dir={data_dir}", "model.kwargs.widths=(4, 8)",
            "model.kwargs.hidden=16", "train.steps=3", "train.batch_size=32",
            "train.eval_every_epochs=none", "train.progress=false"]
  float_setup = setup(get_config("digits_cnn", common))  # its initial state is the float run
  checkpoints = Checkpoints(str(tmp_path / "float"))
  checkpoints.save(float_setup.state, {})
  checkpoints.wait()
  checkpoints.close()
  qat_cfg = get_config("digits_cnn", common + [
      "quant.method=lsq", "quant.w_bits=4", "quant.a_bits=4",
      f"quant.init_from={tmp_path / 'float'}"])
  qat_run = train_classifier(qat_cfg, str(tmp_path / "qat"))
  assert qat_run["quant"]["method"] == "lsq" and qat_run["steps"] == 3
  assert qat_run["mesh"] == "1x1"
  assert qat_run["params"] > param_count(float_setup.state.params)  # plus step sizes
  again = evaluate_workdir(str(tmp_path / "qat"))
  assert again["step"] == 3 and again["test_accuracy"] == qat_run["test_accuracy"]
  with pytest.raises(ValueError, match="unknown quantization method 'nope'"):
    train_classifier(dataclasses.replace(qat_cfg, quant=dataclasses.replace(
        qat_cfg.quant, method="nope")), str(tmp_path / "bad"))


REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPES = {  # config file: (dataset, model, quant method, bits, float run it starts from)
    "cifar10_resnet20_sat_w4a4": ("cifar10", "resnet20", "sat_centered", 4, "cifar10_resnet20"),
    "cifar10_resnet20_sat_w3a3": ("cifar10", "resnet20", "sat_centered", 3, "cifar10_resnet20"),
    "imagenet_resnet18like": ("imagenet2012", "resnet20", None, 4, None),
    "imagenet_resnet18like_lsq_w4a4": ("imagenet2012", "resnet20", "lsq", 4,
                                       "imagenet_resnet18like"),
    "imagenet_mobilenet_v2": ("imagenet2012", "mobilenet_v2", None, 4, None),
    "imagenet_mobilenet_v2_sat_w4a4": ("imagenet2012", "mobilenet_v2", "sat_centered", 4,
                                       "imagenet_mobilenet_v2"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_configs_load_and_fail_fast_offline(name, tmp_path):
  dataset, model, method, bits, float_run = RECIPES[name]
  cfg = get_config(str(REPO / "experiments" / "configs" / f"{name}.py"))
  assert (cfg.name, cfg.data.name, cfg.model.name, cfg.quant.method) == (name, dataset, model,
                                                                         method)
  assert cfg.quant.w_bits == cfg.quant.a_bits == bits and cfg.train.batch_size % 8 == 0
  assert cfg.quant.init_from == (None if float_run is None else os.path.join("runs", float_run))
  save_config(cfg, str(tmp_path / "c.json"))
  assert load_config(str(tmp_path / "c.json")) == config_from_dict(
      json.loads(json.dumps(dataclasses.asdict(cfg))))
  offline = apply_overrides(cfg, [f"data.data_dir={tmp_path / 'empty'}"])
  with pytest.raises(FileNotFoundError, match=f"tfds build {dataset} --data_dir="):
    setup(offline)


def test_no_weight_decay_on_quantizer_parameters():
  params = {"conv": {"kernel": np.ones((3, 3, 1, 4)), "bias": np.ones(4)},
            "compressjax": {"conv": {"kernel": {"weight": {"step": np.ones((1, 1, 1, 4))},
                                                "input": {"alpha": np.ones(())}}}}}
  assert decay_mask(params) == {
      "conv": {"kernel": True, "bias": False},
      "compressjax": {"conv": {"kernel": {"weight": {"step": False}, "input": {"alpha": False}}}}}
