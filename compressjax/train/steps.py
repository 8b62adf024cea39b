"""Step builders for classification, and the helpers custom steps reuse.

``apply_model`` runs a Linen model with its non-param collections (mutable in training),
``apply_gradients`` advances a TrainState, ``step_rng`` gives per-step randomness. A loss is
``loss_fn(logits, labels) -> loss`` or ``-> (loss, {name: extra metric})``.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from compressjax.train.state import TrainState, Variables

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array | tuple[jax.Array, Metrics]]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
EvalStep = Callable[[TrainState, Batch], Metrics]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return (jnp.argmax(logits, -1) == labels).mean()


def step_rng(state: TrainState) -> jax.Array:
  """The rng key of the current step: fold_in(state.rng, state.step)."""
  return jax.random.fold_in(state.rng, state.step)


def apply_model(model: nn.Module, params: Any, model_state: Variables, x: jax.Array, *,
                train: bool, rng: jax.Array | None = None, **kwargs) -> tuple[Any, Variables]:
  """Applies ``model`` and returns (outputs, new model_state).

  In training every non-param collection is mutable (BatchNorm statistics, quantizer
  statistics, ...) and ``rng`` feeds the "dropout" stream; in evaluation nothing changes.
  """
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else None
  if train and model_state:
    outputs, updates = model.apply(variables, x, train=True, rngs=rngs,
                                   mutable=list(model_state), **kwargs)
    return outputs, {**model_state, **updates}
  return model.apply(variables, x, train=train, rngs=rngs, **kwargs), model_state


def apply_gradients(state: TrainState, optimizer: optax.GradientTransformation, grads: Any,
                    model_state: Variables) -> TrainState:
  """One optimizer update of ``state.params``; stores ``model_state`` and bumps the step."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       model_state=model_state, opt_state=opt_state)


def split_loss(result: jax.Array | tuple[jax.Array, Metrics]) -> tuple[jax.Array, Metrics]:
  """Normalises a loss_fn result to (loss, extra metrics)."""
  return result if isinstance(result, tuple) else (result, {})


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    loss_fn: LossFn = cross_entropy) -> TrainStep:
  """A jitted ``step(state, batch) -> (state, metrics)`` for classification.

  Batches are ``{"image": NHWC, "label": int}``; metrics are loss, accuracy and whatever
  extras ``loss_fn`` returns.
  """

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    def objective(params):
      logits, model_state = apply_model(model, params, state.model_state, batch["image"],
                                        train=True, rng=step_rng(state))
      loss, extras = split_loss(loss_fn(logits, batch["label"]))
      return loss, (logits, model_state, extras)

    (loss, (logits, model_state, extras)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": accuracy(logits, batch["label"]), **extras}
    return apply_gradients(state, optimizer, grads, model_state), metrics

  return jax.jit(step)


def make_eval_step(model: nn.Module) -> EvalStep:
  """A jitted ``step(state, batch) -> sums`` of cross-entropy ("loss"), correct predictions
  ("accuracy") and examples ("count") over the batch entries where ``batch["mask"]`` is 1."""

  def step(state: TrainState, batch: Batch) -> Metrics:
    logits, _ = apply_model(model, state.params, state.model_state, batch["image"], train=False)
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return {"loss": (losses * mask).sum(), "accuracy": (correct * mask).sum(),
            "count": mask.sum()}

  return jax.jit(step)
