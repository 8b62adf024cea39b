"""Which kernels a pruner touches: regex rules over '/'-joined parameter paths.

Candidates are the weights of the model's ops: with ``order=call_order(model, variables, x)``
every parameter that a ``dot_general`` / ``conv`` reads as a weight (``core.discover``'s weight
sites: any layer, a custom layer's ``w``, an ``nn.scan`` stack's stacked kernel), in call order;
without it, the leaves named ``kernel`` with ndim >= 2 (never biases or norm parameters).
A stacked ``(L, ...)`` parameter of an ``nn.scan`` stack is pruned as ONE tensor (one mask over
all layers; a global or per-tensor threshold covers the whole stack). Rules match parameter
names like ``"conv1/kernel"`` with ``core.matching`` (``re.search`` in the name or its module
path, so ``"^head$"`` selects the module ``head``). By default the first and last of them (in call order) stay dense,
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

from compressjax.core.matching import first_match, warn_unused
from compressjax.core.compress import NNX_SITE_PARAMS
from compressjax.core.tree_paths import flat_paths


@dataclasses.dataclass(frozen=True)
class Rule:
  """Prune (``prune=True``) or keep dense the kernels whose path matches ``pattern`` (re.search)."""

  pattern: str
  prune: bool = True


def leaf_paths(tree: Any) -> list[tuple[str, Any]]:
  """(path, leaf) for every leaf, paths '/'-joined, in jax's flattening order.

  In the state of a compressed NNX module (what ``nnx.Optimizer`` holds: the wrapped model
  under ``model``, transform state under ``site_params``) the model's parameters keep the names
  its sites and rules give them (``conv1/kernel``, not ``model/conv1/kernel``)."""
  paths = flat_paths(tree)
  if not {"model", NNX_SITE_PARAMS} <= set(tree.keys() if hasattr(tree, "keys") else ()):
    return paths
  return [(p.removeprefix("model/"), leaf) for p, leaf in paths]


def _natural_key(path: str) -> list[Any]:
  """Sort key that compares digit runs as numbers, so Conv_2 comes before Conv_10."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def kernel_paths(params: Any) -> list[str]:
  """Paths of all prunable kernels (leaves named 'kernel', ndim >= 2), naturally sorted."""
  paths = [p for p, x in leaf_paths(params) if p.split("/")[-1] == "kernel" and x.ndim >= 2]
  return sorted(paths, key=_natural_key)


def weight_params(model: Any, *args: Any, method: str | None = None, **kwargs: Any) -> list[str]:
  """Paths of the parameters that the model's ops read as weights, in call order (no compute).

  The weight sites of ``core.discover(model, *args, **kwargs)`` (Linen or NNX, compressed or
  not): every ``dot_general`` / ``conv`` operand that is a parameter, in any layer (a custom
  layer's ``w`` used by ``jnp.einsum``, ``Embed.attend``, an ``nn.scan`` stack's stacked
  ``(L, K, N)`` kernel), deduplicated (a parameter read twice counts once, at its first use).
  """
  from compressjax.core import discover  # pylint: disable=g-import-not-at-top

  if not isinstance(model, nn.Module):
    from compressjax.core import CompressedModule  # pylint: disable=g-import-not-at-top

    if isinstance(model, CompressedModule):
      model = model.model
  sites = discover(model, *args, method=method, **kwargs)
  order: list[str] = []
  for site in sites:
    if site.has_weight and site.param not in order:
      order.append(site.param)
  return order


def call_order(model: Any, variables: Any = None, *args: Any, **kwargs: Any) -> list[str]:
  """Weight parameter paths in call order (see :func:`weight_params`); pass it as ``order``.

  Flax returns parameters sorted by name, which is not the call order for models whose layers
  have names ('stem', 'head'); this tells a pruner the true first/last layer and also selects
  weights that are not named ``kernel``. ``variables`` is not needed (the model is traced
  abstractly) and is accepted for compatibility; keyword flags such as ``train=False`` stay
  static Python values.
  """
  del variables
  return weight_params(model, *args, **kwargs)


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
    order: weight parameter paths in call order (``call_order`` / ``weight_params``): they are
      then the candidates (any weight read by a dot/conv, whatever its name). By default the
      candidates are the leaves named ``kernel``, naturally sorted, which is the call order only
      for auto-named models (Conv_0, ..., Dense_1).
    warn: warn about unused rules.
  """
  if order is None:
    candidates = kernel_paths(params)
  else:
    leaves = dict(leaf_paths(params))
    unknown = [p for p in order if p not in leaves or getattr(leaves[p], "ndim", 0) < 2]
    if unknown:
      raise ValueError(f"order names paths that are not kernels (weight parameters, ndim >= 2) "
                       f"of params: {unknown}; kernels are {kernel_paths(params)}")
    candidates = list(dict.fromkeys(order))
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
