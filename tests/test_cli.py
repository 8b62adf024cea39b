"""Typed configs and the ``compressjax`` command: errors are one actionable line.

``compressjax demo`` (then ``eval`` of its teacher) runs once, in tests/test_pipeline.py."""

import dataclasses
import pathlib
import subprocess
import sys

import pytest

from compressjax.cli import main
from compressjax.config import (Config, apply_overrides, config_from_dict, get_config,
                                load_config, save_config)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_overrides_are_parsed_by_field_type():
  cfg = apply_overrides(get_config("digits_cnn"), [
      "optim.lr=0.05", "train.epochs=3", "train.steps=none", "data.in_memory=false",
      "optim.name=adamw", "model.kwargs.widths=(8, 16)", "optim.grad_clip_norm=1"])
  assert cfg.optim.lr == 0.05 and cfg.train.epochs == 3 and cfg.train.steps is None
  assert cfg.data.in_memory is False and cfg.optim.name == "adamw"
  assert cfg.model.kwargs == {"widths": (8, 16)} and cfg.optim.grad_clip_norm == 1.0


@pytest.mark.parametrize("override, message", [
    ("optim.lr=abc", "bad value for optim.lr: 'abc' (expected float)"),
    ("train.epochs=1.5", "bad value for train.epochs: '1.5' (expected int)"),
    ("optim.name=adam", "bad value for optim.name: 'adam' (expected one of 'sgd', 'adamw')"),
    ("train.batch_size=0", "bad value for train.batch_size: 0 (must be > 0)"),
    ("optim.lrr=1", "unknown config key 'optim.lrr'; allowed here: name, lr,"),
    ("lr", "override 'lr' must look like section.key=value"),
])
def test_bad_overrides_name_key_value_and_type(override, message):
  with pytest.raises(ValueError) as info:
    apply_overrides(Config(), [override])
  assert str(info.value).startswith(message)


def test_config_files_and_json_round_trip(tmp_path):
  cfg = get_config(str(REPO / "experiments" / "configs" / "cifar10_resnet20.py"))
  assert (cfg.name, cfg.data.name, cfg.model.name) == ("cifar10_resnet20", "cifar10", "resnet20")
  assert get_config(str(REPO / "experiments" / "configs" / "digits_cnn.py")) == get_config(
      "digits_cnn")
  save_config(cfg, str(tmp_path / "c.json"))
  assert load_config(str(tmp_path / "c.json")) == cfg
  with pytest.raises(ValueError, match="bad value for optim.lr: 'x'"):
    config_from_dict({**dataclasses.asdict(cfg), "optim": {"lr": "x"}})


def _error(capsys, argv):
  with pytest.raises(SystemExit) as info:
    main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert info.value.code == 2 and len(err) == 1, err
  assert err[0].startswith("compressjax: error: ")
  return err[0]


def test_bad_input_is_one_line(capsys, tmp_path, data_dir):
  train = ["train", "--config", "digits_cnn", "--workdir", str(tmp_path / "run"), "--set",
           f"data.data_dir={data_dir}", "--set"]
  assert "unknown config 'nope'" in _error(capsys, ["train", "--config", "nope"])
  assert "bad value for optim.lr" in _error(capsys, train + ["optim.lr=abc"])
  assert "unknown dataset 'nope'; allowed: digits" in _error(capsys, train + ["data.name=nope"])
  assert "unknown model 'nope'" in _error(capsys, train + ["model.name=nope"])
  empty = tmp_path / "empty"
  message = _error(capsys, train[:-3] + ["--set", "data.name=mnist", "--set",
                                         f"data.data_dir={empty}"])
  assert f"tfds build mnist --data_dir={empty} --file_format=array_record" in message
  assert "not a training run" in _error(capsys, ["eval", "--workdir", str(tmp_path)])
  assert not (tmp_path / "run").exists()  # failed setups leave no half-made run behind


def test_module_entry_point_reports_errors_without_traceback():
  proc = subprocess.run([sys.executable, "-m", "compressjax", "train", "--config", "nope"],
                        capture_output=True, text=True, cwd=REPO, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith("compressjax: error: unknown config 'nope'")
  assert "Traceback" not in proc.stderr
