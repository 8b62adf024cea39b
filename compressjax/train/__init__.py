"""Training: TrainState, step builders, the resumable fit loop on a device mesh, orbax
checkpoints, optimizers, and the steps of the methods that train in their own way
(``distill_step``, ``adabits_step``, ``fracbits_step``; ``quantized`` and ``qat``: QAT and PTQ
from a float run).

Needs the ``[train]`` extra (orbax-checkpoint, tqdm). May import core, the methods and export;
its imports of ``config``, ``data`` and ``models`` (applications) are known layering
exceptions, listed in ``tests/test_layering.py``.
"""

from compressjax.train.checkpoint import (Checkpoints, check_compatible, load_checkpoint,
                                          restore_variables)
from compressjax.train.classifier import (Setup, evaluate_workdir, param_count, setup,
                                          train_classifier)
from compressjax.train.evaluate import evaluate, pad_batch
from compressjax.train.loop import FitResult, fit, total_steps
from compressjax.train.mesh import initialize_distributed, make_mesh
from compressjax.train.metrics_log import MetricsLog, read_metrics
from compressjax.train.optim import decay_mask, make_optimizer, make_schedule
from compressjax.train.sharding import (batch_sharding, check_batch_size, state_shardings,
                                        tree_shardings, with_shardings)
from compressjax.train.state import (TrainState, Variables, create_train_state,
                                     state_from_variables)
from compressjax.train.steps import (EvalStep, LossFn, TrainStep, accuracy, apply_gradients,
                                     apply_model, cross_entropy, make_eval_step, make_train_step,
                                     split_loss, step_rng)

__all__ = [
    "Checkpoints",
    "EvalStep",
    "FitResult",
    "LossFn",
    "MetricsLog",
    "Setup",
    "TrainState",
    "TrainStep",
    "Variables",
    "accuracy",
    "apply_gradients",
    "apply_model",
    "batch_sharding",
    "check_batch_size",
    "check_compatible",
    "create_train_state",
    "cross_entropy",
    "decay_mask",
    "evaluate",
    "evaluate_workdir",
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
    "read_metrics",
    "restore_variables",
    "setup",
    "split_loss",
    "state_from_variables",
    "state_shardings",
    "step_rng",
    "total_steps",
    "tree_shardings",
    "with_shardings",
]
