"""Network Slimming (Liu et al. 2017): L1 on BatchNorm scales, then prune channels by one global
percentile of |gamma| and ``shrink`` to the thinner network.

Sparsity training adds ``s * sign(gamma)`` to the gradient of every BatchNorm scale; chain the
penalty *before* the optimizer: ``optax.chain(slimming_penalty(1e-4), optax.sgd(0.1, 0.9))``
(the paper uses s = 1e-4 for VGG-like nets and 1e-5 for ResNets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax.core.matching import first_match, warn_unused
from compressjax.prune.channels import channel_groups
from compressjax.prune.selection import Rule, leaf_paths


def _bn_scale_paths(params: Any) -> list[str]:
  """Paths of BatchNorm-like scales: 1-D leaves named 'scale'."""
  return [p for p, x in leaf_paths(params) if p.split("/")[-1] == "scale" and x.ndim == 1]


def slimming_penalty(s: float = 1e-4,
                     layers: Sequence[Rule] | None = None) -> optax.GradientTransformation:
  """Adds ``s * sign(gamma)`` to the gradient of every BatchNorm scale (or those ``layers`` pick).

  ``layers`` are rules over scale paths (e.g. ``Rule('bn1/scale')``); ``slimming_rules(model)``
  gives the scales that ``slimming_keep`` scores.
  """
  if not s >= 0:
    raise ValueError(f"slimming penalty s must be >= 0, got {s!r}")

  def chosen(params: Any, warn: bool) -> set[str]:
    paths = _bn_scale_paths(params)
    if layers is None:
      return set(paths)
    if warn:
      warn_unused(layers, paths, what="slimming rule")
    return {p for p in paths if (m := first_match(layers, p)) is not None and m[1].prune}

  def init(params):
    chosen(params, warn=True)
    return optax.EmptyState()

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("slimming_penalty needs the parameters: call update(updates, state, params)")
    paths = chosen(params, warn=False)
    names = iter([p for p, _ in leaf_paths(params)])
    out = jax.tree.map(lambda u, p: u + s * jnp.sign(p) if next(names) in paths else u,
                       updates, params)
    return out, state

  return optax.GradientTransformation(init, update)


def _module(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
  for name in path.split("/"):
    tree = tree[name]
  return tree


def slimming_rules(model: nn.Module) -> list[Rule]:
  """Rules selecting exactly the BatchNorm scales that score prunable channels of ``model``."""
  return [Rule(f"^{g.score_bn}/scale$") for g in channel_groups(model) if g.score_bn]


def channel_scores(model: nn.Module, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Per group, |gamma| of its scoring BatchNorm, or (no BN: CNN hidden) the L2 norm of each
  unit's incoming weights."""
  params = variables["params"]
  out = {}
  for g in channel_groups(model):
    if g.score_bn:
      out[g.name] = np.abs(np.asarray(_module(params, g.score_bn)["scale"]))
    else:
      kernel = np.asarray(_module(params, g.producers[0])["kernel"])
      out[g.name] = np.sqrt(np.sum(kernel.reshape(-1, kernel.shape[-1]) ** 2, axis=0))
  return out


def _keep_fraction(scores: np.ndarray, fraction: float, min_channels: int) -> np.ndarray:
  n_keep = max(min_channels, scores.size - int(round(fraction * scores.size)))
  return np.sort(np.argsort(-scores, kind="stable")[:n_keep])


def slimming_keep(model: nn.Module, variables: Mapping[str, Any], fraction: float,
                  min_channels: int = 1, prune_dense: bool = False) -> dict[str, np.ndarray]:
  """Channels to keep: prune the ``fraction`` of channels with the smallest |gamma| pooled over
  all BN-scored groups (one global threshold); every group keeps at least ``min_channels``
  (its largest). Groups without a BN (CNN ``hidden``) keep all units unless ``prune_dense``,
  which prunes the same fraction of them by weight norm.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"slimming fraction must be in [0, 1), got {fraction!r}")
  if min_channels < 1:
    raise ValueError(f"min_channels must be >= 1, got {min_channels}")
  groups = channel_groups(model)
  scores = channel_scores(model, variables)
  bn = [g.name for g in groups if g.score_bn]
  pooled = np.concatenate([scores[n] for n in bn]) if bn else np.zeros(0)
  n_prune = int(round(fraction * pooled.size))
  threshold = np.sort(pooled, kind="stable")[n_prune - 1] if n_prune else -np.inf
  keep = {}
  for n in bn:
    above = np.flatnonzero(scores[n] > threshold)
    keep[n] = above if above.size >= min_channels else _keep_fraction(scores[n], 1.0, min_channels)
  if prune_dense:
    for g in groups:
      if not g.score_bn:
        keep[g.name] = _keep_fraction(scores[g.name], fraction, min_channels)
  return keep
