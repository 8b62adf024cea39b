"""TrainState: everything a training step reads and writes, as one pytree.

``model_state`` holds every variable collection besides "params" (e.g. "batch_stats", or
"quant_stats" of a quantized model), so steps and checkpoints need no per-model code.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

Variables = dict[str, Any]


@struct.dataclass
class TrainState:
  """Step counter, trainable params, other collections, optimizer state and the base rng key.

  ``rng`` stays fixed; a step derives its randomness with ``jax.random.fold_in(rng, step)``, so
  step k sees the same randomness whether or not the run was resumed.
  """

  step: jax.Array
  params: Any
  model_state: Variables
  opt_state: optax.OptState
  rng: jax.Array

  @property
  def variables(self) -> Variables:
    """The variables dict for ``model.apply``: params plus the other collections."""
    return {"params": self.params, **self.model_state}


def create_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, example_x: jax.Array,
    rng: jax.Array) -> TrainState:
  """Initialises the model on ``example_x`` (train=False) and the optimizer on its params.

  ``rng`` is a raw uint32 key (``jax.random.PRNGKey``), so it can be checkpointed. The whole
  initialisation is one jitted computation (many small eager ops compile slowly on CPU).
  """

  def init(rng: jax.Array, example_x: jax.Array) -> TrainState:
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, example_x,
                           train=False)
    return state_from_variables(variables, optimizer, state_rng)

  return jax.jit(init)(rng, example_x)


def state_from_variables(variables: Variables, optimizer: optax.GradientTransformation,
                         rng: jax.Array) -> TrainState:
  """A step-0 state holding ``variables`` (e.g. a compressed model initialised from a float
  run) with a fresh optimizer state; ``rng`` becomes the state's base key."""
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                    opt_state=optimizer.init(params), rng=rng)


def param_count(params: Any) -> int:
  """Number of scalars in ``params`` (a pytree of arrays or shape/dtype structs)."""
  return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))
