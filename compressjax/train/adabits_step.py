"""AdaBits joint training (:mod:`compressjax.mixed.adabits`): one step over every bit-width."""

import flax.linen as nn
import jax
import optax

from compressjax.mixed.adabits import at_bits, bits_of
from compressjax.train.state import TrainState
from compressjax.train.steps import (Batch, LossFn, Metrics, TrainStep, accuracy,
                                     apply_gradients, apply_model, cross_entropy, split_loss,
                                     step_rng)


def make_joint_step(
    model: nn.Module, optimizer: optax.GradientTransformation, loss_fn: LossFn = cross_entropy
) -> TrainStep:
  """A jitted AdaBits step: the sum over ``bits_list`` of the losses at each bit-width, one
  ``value_and_grad`` and one optimizer step. Each bit-width updates only its own BatchNorm
  statistics. Metrics: ``loss`` (the sum), ``loss_b<bits>`` and ``accuracy_b<bits>``.
  """
  models = [(b, at_bits(model, b)) for b in bits_of(model)]

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    def objective(params):
      model_state, total, metrics = state.model_state, 0.0, {}
      for b, m in models:
        logits, model_state = apply_model(m, params, model_state, batch["image"], train=True,
                                          rng=step_rng(state))
        loss, extras = split_loss(loss_fn(logits, batch["label"]))
        total = total + loss
        metrics.update({f"loss_b{b}": loss, f"accuracy_b{b}": accuracy(logits, batch["label"]),
                        **{f"{k}_b{b}": v for k, v in extras.items()}})
      return total, (model_state, metrics)

    (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return apply_gradients(state, optimizer, grads, model_state), {"loss": loss, **metrics}

  return jax.jit(step)
