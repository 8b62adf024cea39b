"""A distillation train step for classifiers that composes with quantization and pruning.

The student is any Linen model trained through a ``TrainState`` (a ``compress``-ed model with
quantizer collections, or one whose optimizer chains an optax pruner); the teacher is frozen and
runs with ``train=False``. The loss is a :data:`~compressjax.distill.objective.DistillLoss`
(e.g. :func:`~compressjax.distill.objective.hinton_objective`).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.distill.objective import DistillInputs, DistillLoss
from compressjax.distill.taps import apply_with_taps
from compressjax.train.state import TrainState
from compressjax.train.steps import (Batch, Metrics, TrainStep, accuracy, apply_gradients,
                                     split_loss, step_rng)


def make_distill_step(student: nn.Module, optimizer: Any, teacher: nn.Module,
                      teacher_variables: Any, loss_fn: DistillLoss, *,
                      student_paths: Sequence[str] = (),
                      teacher_paths: Sequence[str] = ()) -> TrainStep:
  """A jitted ``step(state, batch) -> (state, metrics)`` training the student in ``state``.

  ``student_paths`` / ``teacher_paths`` are the module paths whose outputs ``loss_fn`` reads
  from ``student_feats`` / ``teacher_feats``. Batches are ``{"image", "label"[, "label_mask"]}``.
  """
  student_paths, teacher_paths = tuple(student_paths), tuple(teacher_paths)

  def step(state: TrainState, batch: Batch, teacher_vars: Any) -> tuple[TrainState, Metrics]:
    x = batch["image"]
    t_logits, t_feats, _ = apply_with_taps(teacher, teacher_vars, x, paths=teacher_paths,
                                           train=False)
    t_logits, t_feats = jax.lax.stop_gradient((t_logits, t_feats))

    def objective(params):
      variables = {"params": params, **state.model_state}
      s_logits, s_feats, updates = apply_with_taps(
          student, variables, x, paths=student_paths, mutable=list(state.model_state),
          train=True, rngs={"dropout": step_rng(state)})
      loss, extras = split_loss(loss_fn(DistillInputs(s_logits, t_logits, s_feats, t_feats,
                                                      batch)))
      return loss, (s_logits, {**state.model_state, **updates}, extras)

    (loss, (logits, model_state, extras)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": accuracy(logits, batch["label"]), **extras}
    return apply_gradients(state, optimizer, grads, model_state), metrics

  jitted = jax.jit(step)
  return lambda state, batch: jitted(state, batch, teacher_variables)
