"""Sharded-training cases on forced host CPU devices, run as subprocesses of
test_train_sharding.py (the pytest process itself keeps one device for the other tests).

    python tests/train/sharding_worker.py mesh OUT_DIR
        8 devices in one process: float runs on meshes 1 and 8x1, compressed runs on 1 and 4x2,
        the 4x2 checkpoint restored onto 8x1 and 1 device, planned shardings, bad input.
        Writes OUT_DIR/results.json.
    python tests/train/sharding_worker.py multihost PROCESS_ID PORT OUT_DIR
        one of 2 processes of 4 devices each (jax.distributed over localhost, gloo
        collectives): the float run on a 4x2 mesh spanning both. Process 0 writes
        OUT_DIR/multihost.json.
"""

import os
import sys

MODE = sys.argv[1]
DEVICES = 8 if MODE == "mesh" else 4
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={DEVICES}").strip()

import dataclasses  # pylint: disable=g-import-not-at-top,wrong-import-position
import json

import jax
import numpy as np
import optax

from compressjax.train import (MeshConfig, fit, load_checkpoint, make_eval_step, make_train_step,
                               read_metrics)
from compressjax.train.mesh import initialize_distributed, make_mesh
from compressjax.train.sharding import state_shardings, tree_shardings, with_shardings
from sharding_cases import (CFG, FSDP_MIN_SIZE, MESHES, TEST, TRAIN, calibrated_model, init_state,
                            models)

def _fit(model, tx, init, mesh_cfg, workdir):
  result = fit(init, make_train_step(model, tx), TRAIN, dataclasses.replace(CFG, mesh=mesh_cfg),
               workdir=workdir, eval_step=make_eval_step(model), eval_data=TEST)
  curve = [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]
  return result, curve


def _specs(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): [a if a is None or isinstance(a, str) else list(a)
                                    for a in x.sharding.spec] for p, x in flat}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run_meshes(out):
  results = {"device_count": jax.device_count(), "curves": {}, "eval": {}, "specs": {}}
  states = {}
  # Float on 8x1 and compressed on 4x2 (the multihost run covers float on 4x2).
  for name, mesh_names in [("float", ("1", "8x1")), ("compressed", ("1", "4x2"))]:
    model, tx = models()[name]
    init = init_state(model, tx)
    for mesh_name in mesh_names:
      result, curve = _fit(model, tx, init, MESHES[mesh_name],
                           os.path.join(out, f"{name}_{mesh_name}"))
      key = f"{name}/{mesh_name}"
      results["curves"][key], results["eval"][key] = curve, result.eval_metrics
      results["specs"][key], states[key] = _specs(result.state), result.state
  results["max_param_diff"] = {
      key: max(float(np.max(np.abs(a - b))) for a, b in zip(
          _leaves(states[key].params), _leaves(states[key.split("/")[0] + "/1"].params)))
      for key in states}
  np.savez(os.path.join(out, "float_1_params.npz"), *_leaves(states["float/1"].params))

  # The compressed run's 4x2 checkpoint restored onto other meshes.
  saved, restored = states["compressed/4x2"], {}
  for mesh_name, devices in [("8x1", None), ("1", jax.devices()[:1])]:
    mesh = make_mesh(MESHES[mesh_name], devices)
    target = with_shardings(saved, state_shardings(saved, mesh, FSDP_MIN_SIZE))
    state, meta = load_checkpoint(os.path.join(out, "compressed_4x2"), target)
    restored[mesh_name] = {
        "equal": all(np.array_equal(a, b) for a, b in zip(_leaves(saved), _leaves(state))),
        "step": int(state.step), "meta_step": meta["step"],
        "devices": sorted({len(x.sharding.device_set) for x in jax.tree.leaves(state)})}
  results["restored"] = restored
  np.savez(os.path.join(out, "compressed_4x2.npz"), *_leaves(saved))

  # Planned (abstract) shardings: calibration statistics, and per-channel bit-widths shaped
  # (C,) as FracBits' kernel-wise lambdas are.
  mesh = make_mesh(MESHES["4x2"])
  abstract = jax.eval_shape(lambda: init_state(calibrated_model(), optax.sgd(0.1)))
  results["specs"]["calibrated/4x2"] = _specs(
      with_shardings(abstract, state_shardings(abstract, mesh, FSDP_MIN_SIZE)))
  params = {"conv": {"kernel": np.zeros((3, 3, 8, 16))},  # a second use of it: "kernel#1"
            "compressjax": {"conv": {"kernel": {"weight": {"lambda": np.zeros(16),
                                                           "odd": np.zeros(3)}},
                                     "kernel#1": {"weight": {"lambda": np.zeros(16)}}}}}
  results["specs"]["bitwidths/4x2"] = _specs(
      with_shardings(params, tree_shardings(params, params, mesh, FSDP_MIN_SIZE)))

  model, tx = models()["float"]
  init, errors = init_state(model, tx), {}
  for key, cfg in {"batch": dataclasses.replace(CFG, batch_size=12),
                   "mesh": dataclasses.replace(CFG, mesh=MeshConfig(data=4, fsdp=4))}.items():
    try:
      fit(init, make_train_step(model, tx), TRAIN, cfg, workdir=os.path.join(out, f"bad_{key}"))
      errors[key] = None
    except ValueError as e:
      errors[key] = str(e)
  results["errors"] = errors
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f)


def run_multihost(process_id, port, out):
  os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                    JAX_PROCESS_ID=str(process_id))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  started = initialize_distributed(dataclasses.replace(CFG, distributed=True))
  model, tx = models()["float"]
  result, curve = _fit(model, tx, init_state(model, tx, MESHES["4x2"]), MESHES["4x2"],
                       os.path.join(out, "multihost_4x2"))
  if process_id == 0:
    with open(os.path.join(out, "multihost.json"), "w") as f:
      json.dump({"started": started, "process_count": jax.process_count(),
                 "device_count": jax.device_count(), "curve": curve,
                 "eval": result.eval_metrics, "step": int(result.state.step)}, f)


if __name__ == "__main__":
  if MODE == "mesh":
    run_meshes(sys.argv[2])
  else:
    run_multihost(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
