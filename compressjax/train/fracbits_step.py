"""FracBits search (:mod:`compressjax.mixed.fracbits`): task loss plus the budget penalty."""

from typing import Any

import flax.linen as nn
import jax
import optax

from compressjax.cost import Profile
from compressjax.mixed.budget import Budget
from compressjax.mixed.fracbits import check_budget, clamp_lambdas, search_cost
from compressjax.train.state import TrainState
from compressjax.train.steps import (Batch, LossFn, Metrics, TrainStep, accuracy,
                                     apply_gradients, apply_model, cross_entropy, split_loss,
                                     step_rng)


def make_search_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    profile: Profile,
    budget: Budget,
    params: Any,
    loss_fn: LossFn = cross_entropy,
) -> TrainStep:
  """A jitted FracBits search step: ``loss_fn + budget.penalty(cost)``, one optimizer step,
  lambdas clamped. ``params`` (e.g. the initial ones) are used to check the budget is
  reachable and every layer is profiled. Metrics: loss, ce, accuracy, cost, penalty.
  """
  check_budget(model, params, profile, budget)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    def objective(p):
      logits, model_state = apply_model(model, p, state.model_state, batch["image"], train=True,
                                        rng=step_rng(state))
      ce, extras = split_loss(loss_fn(logits, batch["label"]))
      cost = search_cost(model, p, profile, budget)
      penalty = budget.penalty(cost)
      metrics = {"ce": ce, "cost": cost, "penalty": penalty,
                 "accuracy": accuracy(logits, batch["label"]), **extras}
      return ce + penalty, (model_state, metrics)

    (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    state = apply_gradients(state, optimizer, grads, model_state)
    return state.replace(params=clamp_lambdas(model, state.params)), {"loss": loss, **metrics}

  return jax.jit(step)
