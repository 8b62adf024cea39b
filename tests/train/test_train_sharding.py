"""Sharded training on 8 forced CPU devices and on 2 processes, checked from this 1-device
process: same loss curves as one device (float on 8x1, compressed on 4x2, float on 4x2 over 2
processes), intended shardings, checkpoints across meshes.

The runs happen once, in subprocesses (tests/train/sharding_worker.py), started together.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from compressjax.train import load_checkpoint, restore_variables
from sharding_cases import models, init_state

WORKER = pathlib.Path(__file__).with_name("sharding_worker.py")
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("sharding")
  env = {**os.environ, "PYTHONWARNINGS": "ignore"}
  # The workers set their own device counts; the conftest's compile flags pass through.
  env["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  port = str(_free_port())
  commands = [[sys.executable, str(WORKER), "mesh", str(out)]] + [
      [sys.executable, str(WORKER), "multihost", str(i), port, str(out)] for i in (0, 1)]
  procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for c in commands]
  for proc, command in zip(procs, commands):
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{command[2:]} failed:\n{output[-4000:]}"
  with open(out / "results.json") as f, open(out / "multihost.json") as g:
    return json.load(f), json.load(g), out


@pytest.mark.parametrize("model, mesh", [("float", "8x1"), ("compressed", "4x2")])
def test_sharded_loss_curve_equals_single_device(runs, model, mesh):
  results = runs[0]
  assert results["device_count"] == 8
  single, sharded = results["curves"][f"{model}/1"], results["curves"][f"{model}/{mesh}"]
  assert len(single) == len(sharded) == 5
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  assert single[-1] != single[0]  # it trained
  for k, v in results["eval"][f"{model}/1"].items():
    np.testing.assert_allclose(results["eval"][f"{model}/{mesh}"][k], v, rtol=1e-5)
  assert results["max_param_diff"][f"{model}/{mesh}"] < 1e-5


def test_two_processes_equal_single_device(runs):
  results, multihost, out = runs
  assert multihost["started"] and multihost["process_count"] == 2
  assert multihost["device_count"] == 8 and multihost["step"] == 5
  np.testing.assert_allclose(multihost["curve"], results["curves"]["float/1"], rtol=1e-5)
  for k, v in results["eval"]["float/1"].items():
    np.testing.assert_allclose(multihost["eval"][k], v, rtol=1e-5)
  # Saved by 2 processes on a 4x2 mesh, restored here on 1 device.
  params = jax.tree.leaves(restore_variables(str(out / "multihost_4x2"))["params"])
  single = np.load(out / "float_1_params.npz")
  assert len(params) == len(single.files)
  for i, got in enumerate(params):
    assert got.sharding.device_set == {jax.devices()[0]}
    np.testing.assert_allclose(got, single[f"arr_{i}"], atol=1e-5)


FSDP_LAST = [None, None, None, "fsdp"]
REPLICATED_1D = [None]
Q = "['compressjax']"  # transform state: params["compressjax"][<site name nesting>]


def test_every_leaf_has_the_intended_sharding(runs):
  specs = runs[0]["specs"]["compressed/4x2"]
  want_params = {
      "['conv0']['kernel']": FSDP_LAST, "['conv1']['kernel']": FSDP_LAST,  # (3,3,1,8) (3,3,8,16)
      "['hidden']['kernel']": ["fsdp", None], "['head']['kernel']": ["fsdp", None],  # (64,32)
      Q + "['conv0']['kernel']['weight']['step']": FSDP_LAST,  # per channel, like the kernel
      Q + "['conv1']['kernel']['weight']['step']": FSDP_LAST,
      Q + "['hidden']['kernel']['weight']['step']": [None, None],
      Q + "['head']['kernel']['weight']['step']": [None, None],
      Q + "['head']['kernel']['input']['step']": [],  # scalar: replicated
      "['head']['bias']": REPLICATED_1D,  # 10 < fsdp_min_size
      "['hidden']['bias']": REPLICATED_1D, "['bn0']['scale']": REPLICATED_1D,
  }
  for path, spec in want_params.items():
    assert specs[".params" + path] == spec, path
    assert specs[".opt_state[0][0].trace" + path] == spec, path  # momentum follows its param
  params = {k[len(".params"):] for k in specs if k.startswith(".params")}
  assert len(params) == 15 and set(want_params) <= params
  masks = {k: v for k, v in specs.items() if ".masks" in k}  # pruning masks in the opt state
  assert masks == {".opt_state[1].masks['conv1']['kernel']": FSDP_LAST,
                   ".opt_state[1].masks['head']['kernel']": ["fsdp", None]}
  for key in (".step", ".rng", ".opt_state[1].step",
              ".model_state['batch_stats']['bn1']['mean']"):
    assert all(a is None for a in specs[key]), key
  assert all(a is None for spec in runs[0]["specs"]["float/8x1"].values() for a in spec)


def test_quantizer_statistics_and_bit_widths_follow_their_kernel(runs):
  specs = runs[0]["specs"]
  calibrated = specs["calibrated/4x2"]
  for site, kernel in [("conv0", FSDP_LAST), ("conv1", FSDP_LAST), ("hidden", ["fsdp", None])]:
    assert calibrated[f".params['{site}']['kernel']"] == kernel
  stats = ".model_state['quant_stats']['conv1']['kernel']['weight']"
  assert calibrated[stats + "['hi']"] == calibrated[stats + "['lo']"] == FSDP_LAST
  hidden = ".model_state['quant_stats']['hidden']['kernel']['weight']"
  assert calibrated[hidden + "['hi']"] == [None, None]
  assert calibrated[stats + "['count']"] == []
  lambdas = "['compressjax']['conv']['kernel']['weight']"
  assert specs["bitwidths/4x2"] == {"['conv']['kernel']": FSDP_LAST,
                                    lambdas + "['lambda']": ["fsdp"],
                                    lambdas + "['odd']": [None],
                                    "['compressjax']['conv']['kernel#1']['weight']['lambda']":
                                        ["fsdp"]}


def test_checkpoint_from_4x2_restores_on_8x1_and_one_device(runs):
  restored = runs[0]["restored"]
  assert restored["8x1"] == {"equal": True, "step": 5, "meta_step": 5, "devices": [8]}
  assert restored["1"] == {"equal": True, "step": 5, "meta_step": 5, "devices": [1]}


def test_checkpoint_from_4x2_restores_in_this_process(runs):
  out = runs[2]
  saved = np.load(out / "compressed_4x2.npz")
  model, tx = models()["compressed"]
  like = jax.eval_shape(lambda: init_state(model, tx))  # no shardings: the default device
  state, meta = load_checkpoint(str(out / "compressed_4x2"), like)
  leaves = jax.tree.leaves(state)
  assert len(leaves) == len(saved.files) and meta["step"] == 5
  for i, leaf in enumerate(leaves):
    assert leaf.sharding.device_set == {jax.devices()[0]}
    np.testing.assert_array_equal(leaf, saved[f"arr_{i}"])


def test_bad_batch_size_and_mesh_are_one_line_errors(runs):
  errors = runs[0]["errors"]
  assert errors["batch"] == ("train.batch_size=12 is not divisible by the 8 devices of the data x"
                             " fsdp mesh (8x1, 1 process(es)); use a multiple of 8")
  assert errors["mesh"] == "train.mesh data=4 x fsdp=4 needs 16 devices but only 8 are available"
