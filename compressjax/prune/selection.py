"""Which kernels a pruner touches: regex rules over '/'-joined parameter paths.

Candidates are the kernels of Dense/Conv-like layers: leaves named ``kernel`` with ndim >= 2 (never
biases or norm parameters). By default the first and last of them (in call order) stay dense,
because they hold few weights and pruning them costs the most accuracy. Rules then decide, first
match wins (``compressjax.core.matching``); with rules given, a kernel no rule matches stays dense.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.matching import first_match, path_str, warn_unused


@dataclasses.dataclass(frozen=True)
class Rule:
  """Prune (``prune=True``) or keep dense the kernels whose path matches ``pattern`` (re.search)."""

  pattern: str
  prune: bool = True


def key_name(key: Any) -> str:
  """Name of one step of a jax key path (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
  """(path, leaf) for every leaf, paths '/'-joined, in jax's flattening order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_str(key_name(k) for k in keys), leaf) for keys, leaf in flat]


def _natural_key(path: str) -> list[Any]:
  """Sort key that compares digit runs as numbers, so Conv_2 comes before Conv_10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def kernel_paths(params: Any) -> list[str]:
  """Paths of all prunable kernels (leaves named 'kernel', ndim >= 2), naturally sorted."""
  paths = [p for p, x in leaf_paths(params) if p.split("/")[-1] == "kernel" and x.ndim >= 2]
  return sorted(paths, key=_natural_key)


def call_order(model: nn.Module, variables: Any, *args: Any, **kwargs: Any) -> list[str]:
  """Kernel paths in the order the model calls their layers (traced abstractly, no compute).

  Flax returns parameters sorted by name, which is not the call order for models whose layers
  have names ('stem', 'head'); pass this to a pruner's ``order`` to find the true first/last layer.
  """
  order: list[str] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    params = context.module.variables.get("params", {})
    if context.method_name == "__call__" and "kernel" in params:
      path = path_str((*context.module.path, "kernel"))
      if path not in order:
        order.append(path)
    return out

  with nn.intercept_methods(record):
    # kwargs are closed over, not traced: flags such as train=False must stay Python values.
    jax.eval_shape(lambda v, a: model.apply(v, *a, **kwargs), variables, args)
  return order


def select(
    params: Any,
    layers: Sequence[Rule] | None = None,
    skip_first_last: bool = True,
    order: Sequence[str] | None = None,
    warn: bool = True,
) -> list[str]:
  """Paths of the kernels to prune.

  Args:
    params: the parameter pytree (the 'params' collection).
    layers: rules; None prunes every candidate. A rule that selects nothing is warned about.
    skip_first_last: keep the first and last kernel dense (decided before the rules apply).
    order: kernel paths in call order (see ``call_order``); by default paths are naturally
      sorted, which is the call order only for auto-named models (Conv_0, ..., Dense_1).
    warn: warn about unused rules.
  """
  candidates = kernel_paths(params)
  if order is not None:
    unknown = [p for p in order if p not in candidates]
    if unknown:
      raise ValueError(f"order names paths that are not kernels of params: {unknown}; "
                       f"kernels are {candidates}")
    rank = {p: i for i, p in enumerate(order)}
    candidates = sorted(candidates, key=lambda p: rank.get(p, len(rank)))
  if skip_first_last:
    candidates = candidates[1:-1]
  if layers is None:
    return candidates
  if warn:
    warn_unused(layers, candidates, what="pruning rule")
  chosen = []
  for path in candidates:
    match = first_match(layers, path)
    if match is not None and match[1].prune:
      chosen.append(path)
  return chosen
