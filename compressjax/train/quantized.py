"""QAT from float, the one way: a recipe's compressed model and its initial state.

The rules of a named recipe (:mod:`compressjax.quant.recipes`) with ``edge_bits`` at the first
and last site; quantizer state initialised (eval mode) on the first :data:`INIT_EXAMPLES`
training images, from the float weights of a float run's workdir (``init_from``) or from the
fresh initialisation. :func:`compressjax.runs.setup` builds a config's QAT runs with it,
:mod:`compressjax.runs.qat` and :mod:`compressjax.pipeline` start from float with it.
"""

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from compressjax.core import compress, discover, init_from
from compressjax.core.fidelity import check_fidelity
from compressjax.quant.recipes import recipe_rules
from compressjax.train.batching import Split
from compressjax.train.checkpoint import restore_variables
from compressjax.train.state import TrainState, Variables, create_train_state, state_from_variables

INIT_EXAMPLES = 256  # training images that initialise the quantizers' state


def init_examples(train: Split) -> np.ndarray:
  """The first :data:`INIT_EXAMPLES` images of ``train`` (all of them if it is smaller)."""
  return train.take(np.arange(min(INIT_EXAMPLES, len(train))))[0]


def quantize_model(model: nn.Module, example: np.ndarray, method: str, *, w_bits: int,
                   a_bits: int, edge_bits: int | None) -> nn.Module:
  """``model`` compressed with the rules of recipe ``method`` (``example``: one input batch)."""
  # One zero example: sites do not depend on the batch size, and ``example`` may be abstract
  # (a ShapeDtypeStruct, as ``setup(abstract=True)`` passes).
  one = np.zeros((1, *example.shape[1:]), example.dtype)
  rules = recipe_rules(method, discover(model, one, train=False), w_bits=w_bits,
                       a_bits=a_bits, edge_bits=edge_bits)
  return compress(model, rules)


def from_float(qmodel: nn.Module, float_vars: Variables, examples: Any) -> Variables:
  """Variables of compressed ``qmodel`` from its float model's; quantizer state initialised
  on ``examples`` in eval mode (pure: jit it, one compiled pass instead of many eager ops)."""
  return init_from(qmodel, float_vars, examples, train=False)


def check_init(model: nn.Module, float_vars: Variables, qmodel: nn.Module, qvars: Variables,
               examples: Any, *, what: str) -> dict[str, float]:
  """Top-1 agreement and relative output error of ``qmodel`` (fake-quant, eval mode) with its
  float ``model`` on ``examples``; warns when init-from-float left it far from float
  (:func:`compressjax.core.fidelity.check_fidelity`)."""
  def logits(m, v):
    return jax.jit(lambda v, x: m.apply(v, x, train=False))(v, examples)
  return check_fidelity(logits(model, float_vars), logits(qmodel, qvars), what=what)


def variables_like(model: nn.Module, examples: Any) -> Variables:
  """Shapes and dtypes of ``model``'s variables on ``examples``: what a checkpoint must hold."""
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), examples)


def quantized_init(model: nn.Module, qmodel: nn.Module, optimizer: optax.GradientTransformation,
                   examples: Any, rng: jax.Array, *, init_from: str | None,
                   abstract: bool) -> tuple[Callable[..., TrainState], tuple[Any, ...]]:
  """``(init, args)``: ``init(*args)`` is the pure (jittable) start state of ``qmodel``.

  ``init_from`` is the workdir of a float run of ``model`` (None: ``qmodel``'s fresh
  initialisation). ``examples`` are the images that initialise the quantizers (a
  ShapeDtypeStruct with ``abstract``: then the float run is not read either, and the args only
  carry shapes for ``jax.eval_shape``).
  """
  if init_from is None:
    return (lambda x: create_train_state(qmodel, optimizer, x, rng)), (examples,)
  like = variables_like(model, examples)
  float_vars = like if abstract else restore_variables(os.path.abspath(init_from), like)
  state_rng = jax.random.split(rng, 3)[2]  # the base key create_train_state would keep

  def init(float_vars: Any, x: jax.Array) -> TrainState:
    return state_from_variables(from_float(qmodel, float_vars, x), optimizer, state_rng)

  return init, (float_vars, examples)
