"""Training: TrainState, step builders, splits and their resumable batches, the fit loop on a
device mesh (with its settings dataclasses), orbax checkpoints, optimizers, QAT from a float run
(``quantized``), and the steps of the methods that train in their own way (``distill_step``,
``adabits_step``, ``fracbits_step``).

Everything takes plain arguments (a model, a split, an optimizer, settings, numbers): building
a dataset or zoo model from a ``Config`` is the applications' job (:mod:`compressjax.runs`).
Needs the ``[train]`` extra (orbax-checkpoint, tqdm). May import core, the methods and export;
never ``config``, ``data``, ``models`` or other applications (``tests/test_layering.py``).
Names are imported from their modules on first use (PEP 562), so the light modules
(``batching``, ``settings``, ``steps``) load without orbax or tqdm.
"""

import importlib
from typing import Any

# Functions named like their (light) modules, bound now: importing the submodule later (as the
# loop does) would otherwise leave the module, not the function, under that name.
from compressjax.train.evaluate import evaluate
from compressjax.train.prefetch import prefetch

_EXPORTS = {  # public name -> its module
    "ArraySplit": "batching",
    "Augment": "batching",
    "Checkpoints": "checkpoint",
    "EvalStep": "steps",
    "FitResult": "loop",
    "LossFn": "steps",
    "MeshConfig": "settings",
    "MetricsLog": "metrics_log",
    "OptimConfig": "settings",
    "Split": "batching",
    "TrainConfig": "settings",
    "TrainState": "state",
    "TrainStep": "steps",
    "Variables": "state",
    "accuracy": "steps",
    "apply_gradients": "steps",
    "apply_model": "steps",
    "batch_sharding": "sharding",
    "batches": "batching",
    "check_batch_size": "sharding",
    "check_compatible": "checkpoint",
    "create_train_state": "state",
    "cross_entropy": "steps",
    "decay_mask": "optim",
    "epoch_order": "batching",
    "evaluate": "evaluate",
    "fit": "loop",
    "initialize_distributed": "mesh",
    "load_checkpoint": "checkpoint",
    "make_eval_step": "steps",
    "make_mesh": "mesh",
    "make_optimizer": "optim",
    "make_schedule": "optim",
    "make_train_step": "steps",
    "pad_batch": "evaluate",
    "param_count": "state",
    "prefetch": "prefetch",
    "read_metrics": "metrics_log",
    "restore_variables": "checkpoint",
    "split_loss": "steps",
    "state_from_variables": "state",
    "state_shardings": "sharding",
    "step_rng": "steps",
    "steps_per_epoch": "batching",
    "total_steps": "loop",
    "tree_shardings": "sharding",
    "with_shardings": "sharding",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'compressjax.train' has no attribute {name!r}")
  value = getattr(importlib.import_module(f"compressjax.train.{_EXPORTS[name]}"), name)
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS})
