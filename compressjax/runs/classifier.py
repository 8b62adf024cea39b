"""Train and evaluate a zoo classifier described by a ``Config`` (what the CLI runs).

A run's workdir holds ``config.json``, ``metrics.jsonl`` and ``checkpoints/``; ``eval`` and
later compression steps rebuild the model and data from the saved config.
"""

import dataclasses
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from compressjax.config import Config, MeshConfig, config_from_dict, load_config, save_config
from compressjax.data import Dataset, get_augment, load_dataset
from compressjax.models import get_model
from compressjax.train import (TrainState, check_batch_size, create_train_state, evaluate, fit,
                               initialize_distributed, load_checkpoint, make_eval_step, make_mesh,
                               make_optimizer, make_train_step, param_count, state_shardings,
                               steps_per_epoch, total_steps, with_shardings)
from compressjax.train.quantized import (INIT_EXAMPLES, init_examples, quantize_model,
                                         quantized_init)
from compressjax.train.sharding import replicated

CONFIG_FILE = "config.json"
# How a run executes, not what it computes: a resume may change them (e.g. another mesh).
_EXECUTION_KEYS = ("train.mesh.", "train.distributed", "train.prefetch")


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
  """Everything a config describes, built: data, model, optimizer and the initial state."""

  cfg: Config
  dataset: Dataset
  model: nn.Module
  optimizer: optax.GradientTransformation
  state: TrainState


def setup(cfg: Config, *, abstract: bool = False) -> Setup:
  """Loads the data and builds model, optimizer and initial state (seeded by train.seed).

  With a ``quant`` method the model is the quantized one (QAT), initialised from the float run
  ``quant.init_from`` if given. The state is created already sharded over the mesh of
  ``train.mesh`` (every process computes its own shards). With ``abstract``, the state holds
  only shapes, dtypes and shardings (``jax.eval_shape``): enough to restore a checkpoint into,
  without compiling the initialisation.
  """
  mesh = make_mesh(cfg.train.mesh)  # a mesh the devices cannot hold fails before any loading
  d = cfg.data
  dataset = load_dataset(d.name, data_dir=d.data_dir, split_seed=d.split_seed,
                         image_size=d.image_size, in_memory=d.in_memory, download=d.download)
  model = get_model(cfg.model.name, dataset.num_classes, **cfg.model.kwargs)
  optimizer = make_optimizer(
      cfg.optim, total_steps=total_steps(cfg.train, len(dataset.train)),
      steps_per_epoch=steps_per_epoch(len(dataset.train), cfg.train.batch_size))
  rng = jax.random.PRNGKey(cfg.train.seed)
  if cfg.quant.method is None:
    example = np.zeros((1, *dataset.input_shape), np.float32)
    init, args = (lambda: create_train_state(model, optimizer, example, rng)), ()
  else:
    q, count = cfg.quant, min(INIT_EXAMPLES, len(dataset.train))
    examples = (jax.ShapeDtypeStruct((count, *dataset.input_shape), np.float32) if abstract
                else init_examples(dataset.train))
    float_model = model
    model = quantize_model(model, examples, q.method, w_bits=q.w_bits, a_bits=q.a_bits,
                           edge_bits=q.edge_bits)
    init, args = quantized_init(float_model, model, optimizer, examples, rng,
                                init_from=q.init_from, abstract=abstract)
  shape = jax.eval_shape(init, *args)
  shardings = state_shardings(shape, mesh, cfg.train.mesh.fsdp_min_size)
  if abstract:
    state = with_shardings(shape, shardings)
  else:
    args = jax.device_put(args, replicated(mesh))  # e.g. float weights restored elsewhere
    state = jax.jit(init, out_shardings=shardings)(*args)
  return Setup(cfg, dataset, model, optimizer, state)


def train_classifier(cfg: Config, workdir: str, *,
                     stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) ``cfg`` in ``workdir``; returns a summary with test accuracy."""
  initialize_distributed(cfg.train)  # before anything else touches JAX
  workdir = os.path.abspath(workdir)
  t0 = time.time()
  s = setup(cfg)  # fails on bad data/model/mesh settings before the workdir is touched
  mesh = make_mesh(cfg.train.mesh)
  check_batch_size(cfg.train.batch_size, mesh)
  _claim_workdir(cfg, workdir)
  augment = s.dataset.augment if cfg.data.augment == "default" else get_augment(cfg.data.augment)
  result = fit(s.state, make_train_step(s.model, s.optimizer), s.dataset.train, cfg.train,
               workdir=workdir, eval_step=make_eval_step(s.model), eval_data=s.dataset.test,
               augment=augment, stop_after_steps=stop_after_steps)
  return {
      "config": cfg.name,
      "dataset": cfg.data.name,
      "model": cfg.model.name,
      "quant": dataclasses.asdict(cfg.quant) if cfg.quant.method else None,
      "mesh": "x".join(map(str, mesh.devices.shape)),
      "params": param_count(result.state.params),
      "steps": int(result.state.step),
      "test_accuracy": result.eval_metrics.get("accuracy"),
      "test_loss": result.eval_metrics.get("loss"),
      "time_s": round(time.time() - t0, 2),
      "workdir": workdir,
      "checkpoint": os.path.join(workdir, "checkpoints", str(int(result.state.step))),
  }


def evaluate_workdir(workdir: str, step: int | None = None) -> dict[str, Any]:
  """Evaluates the (latest) checkpoint of a run on its test split, using its saved config."""
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} is not a training run (no {CONFIG_FILE}); "
                            "run `compressjax train --workdir DIR` first")
  cfg = load_config(path)
  # Plain data parallelism on this machine's devices, whatever mesh trained the run.
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=MeshConfig()))
  s = setup(cfg, abstract=True)
  state, _ = load_checkpoint(workdir, s.state, step)
  mesh = make_mesh(cfg.train.mesh)
  eval_step = jax.jit(make_eval_step(s.model), out_shardings=replicated(mesh))
  metrics = evaluate(eval_step, state, s.dataset.test, cfg.train.batch_size, mesh=mesh)
  return {"config": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name,
          "step": int(state.step), "test_accuracy": metrics["accuracy"],
          "test_loss": metrics["loss"], "workdir": workdir}


def _claim_workdir(cfg: Config, workdir: str) -> None:
  """Writes config.json, or checks that an existing one is the same config (a resume).

  Fields the saved config lacks (written by an older version) count as their defaults; the
  execution fields (mesh, distributed, prefetch) may differ. Only process 0 writes.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    with open(path) as f:
      saved = _flat(_as_json(config_from_dict(json.load(f))))
    now = _flat(_as_json(cfg))
    diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
             if saved.get(k) != now.get(k) and not k.startswith(_EXECUTION_KEYS)]
    if diffs:
      raise ValueError(f"workdir {workdir} holds a run of another config ({'; '.join(diffs[:4])}); "
                       "use a new --workdir")
  elif jax.process_index() == 0:
    save_config(cfg, path)


def _as_json(cfg: Config) -> dict[str, Any]:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k != "kwargs":
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out
