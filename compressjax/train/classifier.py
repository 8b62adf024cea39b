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

from compressjax.config import Config, load_config, save_config
from compressjax.data import Dataset, get_augment, load_dataset, steps_per_epoch
from compressjax.models import get_model
from compressjax.train.checkpoint import load_checkpoint
from compressjax.train.evaluate import evaluate
from compressjax.train.loop import fit, total_steps
from compressjax.train.optim import make_optimizer
from compressjax.train.state import TrainState, create_train_state
from compressjax.train.steps import make_eval_step, make_train_step

CONFIG_FILE = "config.json"


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

  With ``abstract``, the state holds only shapes and dtypes (``jax.eval_shape``): enough to
  restore a checkpoint into, without compiling the initialisation.
  """
  d = cfg.data
  dataset = load_dataset(d.name, data_dir=d.data_dir, split_seed=d.split_seed,
                         image_size=d.image_size, in_memory=d.in_memory, download=d.download)
  model = get_model(cfg.model.name, dataset.num_classes, **cfg.model.kwargs)
  optimizer = make_optimizer(
      cfg.optim, total_steps=total_steps(cfg.train, len(dataset.train)),
      steps_per_epoch=steps_per_epoch(len(dataset.train), cfg.train.batch_size))
  example = np.zeros((1, *dataset.input_shape), np.float32)
  init = lambda: create_train_state(model, optimizer, example, jax.random.PRNGKey(cfg.train.seed))
  state = jax.eval_shape(init) if abstract else init()
  return Setup(cfg, dataset, model, optimizer, state)


def param_count(params: Any) -> int:
  return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def train_classifier(cfg: Config, workdir: str, *,
                     stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) ``cfg`` in ``workdir``; returns a summary with test accuracy."""
  workdir = os.path.abspath(workdir)
  t0 = time.time()
  s = setup(cfg)  # fails on bad data/model settings before the workdir is touched
  _claim_workdir(cfg, workdir)
  augment = s.dataset.augment if cfg.data.augment == "default" else get_augment(cfg.data.augment)
  result = fit(s.state, make_train_step(s.model, s.optimizer), s.dataset.train, cfg.train,
               workdir=workdir, eval_step=make_eval_step(s.model), eval_data=s.dataset.test,
               augment=augment, stop_after_steps=stop_after_steps)
  return {
      "config": cfg.name,
      "dataset": cfg.data.name,
      "model": cfg.model.name,
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
  s = setup(cfg, abstract=True)
  state, _ = load_checkpoint(workdir, s.state, step)
  metrics = evaluate(make_eval_step(s.model), state, s.dataset.test, cfg.train.batch_size)
  return {"config": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name,
          "step": int(state.step), "test_accuracy": metrics["accuracy"],
          "test_loss": metrics["loss"], "workdir": workdir}


def _claim_workdir(cfg: Config, workdir: str) -> None:
  """Writes config.json, or checks that an existing one is the same config (a resume)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    saved = _flat(json.loads(open(path).read()))
    now = _flat(json.loads(json.dumps(dataclasses.asdict(cfg))))
    diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
             if saved.get(k) != now.get(k)]
    if diffs:
      raise ValueError(f"workdir {workdir} holds a run of another config ({'; '.join(diffs[:4])}); "
                       "use a new --workdir")
  else:
    save_config(cfg, path)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and k != "kwargs":
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out
