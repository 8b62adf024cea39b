"""Training: TrainState, step builders, splits and their resumable batches, the fit loop on a
device mesh (with its settings dataclasses), orbax checkpoints, optimizers, QAT from a float run
(``quantized``), and the steps of the methods that train in their own way (``distill_step``,
``adabits_step``, ``fracbits_step``).

Everything takes plain arguments (a model, a split, an optimizer, settings, numbers): building
a dataset or zoo model from a ``Config`` is the applications' job (:mod:`compressjax.runs`).
Needs the ``[train]`` extra (orbax-checkpoint, tqdm). May import core, the methods and export;
never ``config``, ``data``, ``models`` or other applications (``tests/test_layering.py``).
"""

from compressjax.train.batching import (ArraySplit, Augment, Split, batches, epoch_order,
                                        steps_per_epoch)
from compressjax.train.checkpoint import (Checkpoints, check_compatible, load_checkpoint,
                                          restore_variables)
from compressjax.train.evaluate import evaluate, pad_batch
from compressjax.train.loop import FitResult, fit, total_steps
from compressjax.train.mesh import initialize_distributed, make_mesh
from compressjax.train.metrics_log import MetricsLog, read_metrics
from compressjax.train.optim import decay_mask, make_optimizer, make_schedule
from compressjax.train.prefetch import prefetch
from compressjax.train.settings import MeshConfig, OptimConfig, TrainConfig
from compressjax.train.sharding import (batch_sharding, check_batch_size, state_shardings,
                                        tree_shardings, with_shardings)
from compressjax.train.state import (TrainState, Variables, create_train_state, param_count,
                                     state_from_variables)
from compressjax.train.steps import (EvalStep, LossFn, TrainStep, accuracy, apply_gradients,
                                     apply_model, cross_entropy, make_eval_step, make_train_step,
                                     split_loss, step_rng)

__all__ = [
    "ArraySplit",
    "Augment",
    "Checkpoints",
    "EvalStep",
    "FitResult",
    "LossFn",
    "MeshConfig",
    "MetricsLog",
    "OptimConfig",
    "Split",
    "TrainConfig",
    "TrainState",
    "TrainStep",
    "Variables",
    "accuracy",
    "apply_gradients",
    "apply_model",
    "batch_sharding",
    "batches",
    "check_batch_size",
    "check_compatible",
    "create_train_state",
    "cross_entropy",
    "decay_mask",
    "epoch_order",
    "evaluate",
    "fit",
    "initialize_distributed",
    "load_checkpoint",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "pad_batch",
    "param_count",
    "prefetch",
    "read_metrics",
    "restore_variables",
    "split_loss",
    "state_from_variables",
    "state_shardings",
    "steps_per_epoch",
    "tree_shardings",
    "total_steps",
    "with_shardings",
]
