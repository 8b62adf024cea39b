"""Bad input outside the core never passes silently: one line naming the key and the value,
within 5 s, and nothing left behind (offline downloads, checkpoints of another model, meshes).
"""

import os
import socket
import time

import jax
import optax
import pytest
import tensorflow_datasets as tfds

from compressjax.cli import main
from compressjax.data import load_dataset
from compressjax.models import MLP
from compressjax.train import Checkpoints, create_train_state

FAST_S = 5.0


@pytest.fixture
def offline(monkeypatch):
  def refuse(address, *args, **kwargs):
    raise socket.gaierror(-2, f"Name or service not known: {address[0]}")

  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  load_dataset("digits", data_dir=data_dir)  # prepared once, outside the timed parts
  return data_dir


def _cli_error(capsys, argv) -> str:
  t0 = time.perf_counter()
  with pytest.raises(SystemExit) as info:
    main(argv)
  assert time.perf_counter() - t0 < FAST_S
  lines = capsys.readouterr().err.strip().splitlines()
  assert info.value.code == 2 and len(lines) == 1, lines
  assert lines[0].startswith("compressjax: error: ")
  return lines[0]


def test_offline_download_fails_at_once_and_leaves_nothing(offline, tmp_path):
  t0 = time.perf_counter()
  with pytest.raises(ConnectionError) as info:
    load_dataset("mnist", data_dir=str(tmp_path / "tfds"), download=True)
  assert time.perf_counter() - t0 < FAST_S
  message = str(info.value)
  assert "\n" not in message and "'mnist'" in message and "data.download=true" in message
  assert "storage.googleapis.com" in message and "tfds build mnist" in message
  assert not (tmp_path / "tfds").exists()


def test_offline_download_from_the_cli_is_one_line(offline, tmp_path, capsys):
  line = _cli_error(capsys, ["train", "--config", "digits_cnn", "--workdir", str(tmp_path / "run"),
                             "--set", "data.name=mnist", "--set", "data.download=true",
                             "--set", f"data.data_dir={tmp_path / 'tfds'}"])
  assert "dataset 'mnist': data.download=true but none of its hosts" in line
  assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


def test_a_failed_download_removes_what_it_created(monkeypatch, tmp_path):
  data_dir = tmp_path / "tfds"
  (data_dir / "other").mkdir(parents=True)  # someone else's prepared data stays
  monkeypatch.setattr(socket, "create_connection", lambda *a, **k: socket.socket())

  def broken_download(self, *args, **kwargs):
    (data_dir / "downloads" / "mnist.tmp").mkdir(parents=True)
    (data_dir / "mnist" / "3.0.1.incomplete").mkdir(parents=True)
    raise OSError("connection reset by peer")

  monkeypatch.setattr(tfds.builder_cls("mnist"), "download_and_prepare", broken_download)
  with pytest.raises(ConnectionError) as info:
    load_dataset("mnist", data_dir=str(data_dir), download=True)
  message = str(info.value)
  assert "\n" not in message and "(connection reset by peer)" in message
  assert "nothing was left behind" in message
  assert sorted(os.listdir(data_dir)) == ["other"]


def test_qat_from_a_run_of_another_model_names_the_first_difference(tmp_path, capsys,
                                                                    digits_dir):
  float_dir = tmp_path / "float"
  state = create_train_state(MLP(features=(8,)), optax.sgd(0.1), jax.numpy.zeros((1, 8, 8, 1)),
                             jax.random.PRNGKey(0))
  checkpoints = Checkpoints(str(float_dir))
  checkpoints.save(state, {})
  checkpoints.wait()
  checkpoints.close()
  line = _cli_error(capsys, ["train", "--config", "digits_cnn", "--workdir", str(tmp_path / "qat"),
                             "--set", f"data.data_dir={digits_dir}", "--set", "quant.method=lsq",
                             "--set", f"quant.init_from={float_dir}"])
  assert f"checkpoint {float_dir}/checkpoints/0 is from another model: first difference" in line
  assert "first difference params/bn0/bias: checkpoint missing vs model (32,)" in line
  assert not (tmp_path / "qat").exists()


@pytest.mark.parametrize("override, message", [
    ("train.mesh.fsdp=3", "train.mesh fsdp=3 does not divide the 1 devices"),
    ("train.mesh.data=2", "train.mesh data=2 x fsdp=1 needs 2 devices but only 1"),
    ("train.mesh.data=0", "bad value for train.mesh.data: 0"),
])
def test_mesh_sizes_that_do_not_fit_name_the_key_and_value(override, message, tmp_path, capsys,
                                                          digits_dir):
  line = _cli_error(capsys, ["train", "--config", "digits_cnn", "--workdir", str(tmp_path / "run"),
                             "--set", f"data.data_dir={digits_dir}", "--set", override])
  assert message in line
  assert not (tmp_path / "run").exists()
