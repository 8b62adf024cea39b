"""runs: a config's mesh, quant and prefetch settings, resumes, QAT from a config through the
CLI's ``train``/``eval``, the recipe configs (on 1 device)."""

import dataclasses
import json
import os
import pathlib

import pytest

from compressjax.cli import main
from compressjax.config import (Config, MeshConfig, apply_overrides, config_from_dict,
                                get_config, load_config, save_config)
from compressjax.runs import evaluate_workdir, setup, train_classifier
from compressjax.runs.classifier import _claim_workdir
from compressjax.train import Checkpoints, param_count


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
