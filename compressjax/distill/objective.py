"""What a classifier distillation loss sees, and the usual one (Hinton KD plus feature terms).

The student is trained by :func:`compressjax.train.distill_step.make_distill_step`; one loss
function sees both models' outputs and tapped features:

    loss_fn(DistillInputs) -> loss | (loss, {name: metric})

``hinton_objective`` builds the usual one, ``(1 - a) CE + a T^2 KL`` (plus any feature terms).
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from compressjax.distill.kl import hinton_loss

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DistillInputs:
  """What a distillation loss sees in one step."""
  student_logits: jax.Array
  teacher_logits: jax.Array
  student_feats: Mapping[str, jax.Array]
  teacher_feats: Mapping[str, jax.Array]
  batch: Batch


DistillLoss = Callable[[DistillInputs], jax.Array | tuple[jax.Array, Metrics]]
FeatureTerm = tuple[str, str, Callable[[jax.Array, jax.Array], jax.Array], float]


def hinton_objective(temperature: float = 4.0, alpha: float = 0.9,
                     feature_terms: Sequence[FeatureTerm] = ()) -> DistillLoss:
  """``hinton_loss`` on logits plus ``weight * fn(student_feats[s], teacher_feats[t])`` for each
  (s, t, fn, weight) term. Examples with a negative label (or ``batch["label_mask"]`` 0) are
  unlabelled: they get only the teacher's soft targets (few-label training)."""

  def loss_fn(d: DistillInputs) -> tuple[jax.Array, Metrics]:
    labels = d.batch["label"]
    mask = d.batch.get("label_mask", labels >= 0)
    kd = hinton_loss(d.student_logits, d.teacher_logits, jnp.maximum(labels, 0), temperature,
                     alpha, mask)
    metrics = {"kd": kd}
    total = kd
    for s, t, fn, weight in feature_terms:
      term = fn(d.student_feats[s], d.teacher_feats[t])
      metrics[f"feat/{s}"] = term
      total = total + weight * term
    return total, metrics

  return loss_fn
