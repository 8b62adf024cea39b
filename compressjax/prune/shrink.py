"""Build the genuinely thinner network after channel pruning, or zero the pruned channels.

``keep`` maps a channel group name (see ``channels.channel_groups``) to the indices of the
channels to keep; groups not named keep all their channels. ``shrink`` returns a module of the
same class with smaller width fields and variables holding the kept slices (really smaller
arrays). ``mask_channels`` keeps the shapes but zeroes the pruned channels (BatchNorm scale and
bias, producer kernel columns and bias), so those channels output exactly 0: in eval mode the
shrunk model computes the same function as the masked one (up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from compressjax.prune.channels import ChannelGroup, channel_groups, thin_model

Variables = Mapping[str, Any]


def _check_keep(groups: Sequence[ChannelGroup], keep: Mapping[str, Any],
                min_channels: int) -> dict[str, np.ndarray]:
  """Validated, sorted keep indices for every group (all channels where not given)."""
  names = {g.name for g in groups}
  unknown = sorted(set(keep) - names)
  if unknown:
    raise ValueError(f"keep names unknown channel groups {unknown}; groups are {sorted(names)}")
  out = {}
  for g in groups:
    idx = np.arange(g.size) if g.name not in keep else np.asarray(keep[g.name]).reshape(-1)
    if idx.size < max(1, min_channels):
      raise ValueError(f"channel group {g.name!r} would keep {idx.size} of {g.size} channels; "
                       f"at least {max(1, min_channels)} must remain")
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= g.size:
      raise ValueError(f"keep[{g.name!r}] must hold integer indices in [0, {g.size}), got {idx}")
    if np.unique(idx).size != idx.size:
      raise ValueError(f"keep[{g.name!r}] repeats channel indices: {idx}")
    out[g.name] = np.sort(idx)
  return out


def _edit(variables: Variables, collection: str, module: str, leaf: str,
          fn: Callable[[np.ndarray], np.ndarray]) -> None:
  """Applies ``fn`` (on host, numpy) in place to variables[collection][module][leaf], if any."""
  node = variables.get(collection)
  for name in module.split("/"):
    if not isinstance(node, dict) or name not in node:
      return
    node = node[name]
  if leaf in node:
    node[leaf] = jnp.asarray(fn(np.asarray(node[leaf])))


def _mutable(tree: Any) -> Any:
  return {k: _mutable(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _take_flat_rows(kernel: np.ndarray, idx: np.ndarray, channels: int) -> np.ndarray:
  """Keeps rows of a Dense kernel fed by a flattened (..., channels) feature map."""
  rows = kernel.reshape(-1, channels, kernel.shape[-1])[:, idx]
  return rows.reshape(-1, kernel.shape[-1])


def _slice_group(v: dict, g: ChannelGroup, idx: np.ndarray) -> None:
  def take(axis):
    return lambda x: np.take(x, idx, axis=axis)

  for m in g.producers:
    _edit(v, "params", m, "kernel", take(-1))
    _edit(v, "params", m, "bias", take(0))
  for m in g.norms:
    for coll, leaf in (("params", "scale"), ("params", "bias"), ("batch_stats", "mean"),
                       ("batch_stats", "var")):
      _edit(v, coll, m, leaf, take(0))
  for m in g.consumers:
    _edit(v, "params", m, "kernel", take(-2))
  for m in g.flat_consumers:
    _edit(v, "params", m, "kernel", lambda k: _take_flat_rows(k, idx, g.size))


def _zero_group(v: dict, g: ChannelGroup, idx: np.ndarray) -> None:
  keep = np.zeros(g.size, bool)
  keep[idx] = True

  def zero_last(x):
    return np.where(keep, x, np.zeros_like(x))

  for m in g.producers:
    _edit(v, "params", m, "kernel", zero_last)
    _edit(v, "params", m, "bias", zero_last)
  for m in g.norms:
    _edit(v, "params", m, "scale", zero_last)
    _edit(v, "params", m, "bias", zero_last)


def shrink(model: nn.Module, variables: Variables, keep: Mapping[str, Any],
           min_channels: int = 1) -> tuple[nn.Module, dict[str, Any]]:
  """Returns ``(thin_model, thin_variables)`` keeping ``keep[group]`` channels of each group.

  Raises ValueError when a group would keep fewer than ``min_channels`` (>= 1) channels.
  """
  groups = channel_groups(model)
  idx = _check_keep(groups, keep, min_channels)
  v = _mutable(variables)
  for g in groups:
    if idx[g.name].size != g.size:
      _slice_group(v, g, idx[g.name])
  return thin_model(model, {g.name: int(idx[g.name].size) for g in groups}), v


def mask_channels(model: nn.Module, variables: Variables, keep: Mapping[str, Any],
                  min_channels: int = 1) -> dict[str, Any]:
  """Variables of the same shapes whose pruned channels output exactly zero."""
  groups = channel_groups(model)
  idx = _check_keep(groups, keep, min_channels)
  v = _mutable(variables)
  for g in groups:
    _zero_group(v, g, idx[g.name])
  return v
