"""A serving model as a pure function of its flat weight leaves and one input.

Both artifacts take weights as inputs (StableHLO) or initializers (ONNX) rather than constants
folded into the program, so they need the model as ``fn(leaves, x)`` plus the leaves and their
names. Only JAX and Flax are used: QArray leaves flatten to their packed codes, scales and zero
points, so the weights stay packed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def serving_function(serving_model: Any, serving_vars: dict | None
                     ) -> tuple[Callable[[list, jax.Array], jax.Array], list[np.ndarray], list[str]]:
  """``(fn, leaves, names)`` with ``fn(leaves, x) == serving_model(x)``.

  Linen: ``serving_model.apply(serving_vars, x)``. NNX: ``serving_vars`` is None and the module
  (e.g. what ``cj.export(compressed_module)`` returns) is called as ``module(x)``.
  """
  if serving_vars is None:
    from flax import nnx  # pylint: disable=g-import-not-at-top

    if not isinstance(serving_model, nnx.Module):
      raise TypeError("serving_vars is None, so serving_model must be an NNX module; got "
                      f"{type(serving_model).__name__}")
    graphdef, state = nnx.split(serving_model)
    tree = state
    apply = lambda s, x: nnx.merge(graphdef, s)(x)
  else:
    tree = serving_vars
    apply = serving_model.apply
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
  names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in with_paths]
  leaves = [np.asarray(v) for _, v in with_paths]
  if len(set(names)) != len(names):
    raise ValueError(f"serving variables have duplicate leaf names: {names}")

  def fn(flat: list, x: jax.Array) -> jax.Array:
    return apply(jax.tree_util.tree_unflatten(treedef, flat), x)

  return fn, leaves, names
