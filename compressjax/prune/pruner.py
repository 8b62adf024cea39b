"""Pruning as an optax transform that chains after any optimizer (jaxpruner style).

    tx = optax.chain(optax.adamw(1e-3, weight_decay=1e-4), cj.prune.magnitude(0.9, schedule))

The transform keeps boolean masks in its state, recomputes them on the schedule's update steps
(inside jit, via ``lax.cond``) and rewrites the incoming update as ``where(mask, u, -params)``, so
``optax.apply_updates`` yields exactly 0 at every masked position (``p + (-p) == 0`` in IEEE
floats) whatever the optimizer did (momentum, Adam moments, weight decay), and exactly
``p + u`` elsewhere. It must be the last transform of the chain.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from compressjax.prune.schedules import Schedule, one_shot
from compressjax.prune.selection import Rule, kernel_paths, leaf_paths, select

ScoreFn = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


class Pattern(Protocol):
  """How scores become masks (unstructured, block, N:M)."""

  def check(self, path: str, shape: tuple[int, ...]) -> None:
    ...

  def masks(self, scores: Mapping[str, jax.Array], alive: Mapping[str, jax.Array],
            sparsity_at: Callable[[float], jax.Array]) -> dict[str, jax.Array]:
    ...


class PrunerState(NamedTuple):
  """``masks`` mirrors params: a bool array per pruned kernel, None elsewhere."""

  step: jax.Array
  masks: Any
  key: jax.Array | None


def _is_none(x: Any) -> bool:
  return x is None


def _tree_from_paths(params: Any, by_path: Mapping[str, Any]) -> Any:
  """A tree like ``params`` holding ``by_path[path]`` where given and None elsewhere."""
  paths = iter([p for p, _ in leaf_paths(params)])
  return jax.tree.map(lambda _: by_path.get(next(paths)), params)


def _masked_updates(updates: Any, params: Any, masks: Any) -> Any:
  return jax.tree.map(
      lambda m, u, p: u if m is None else jnp.where(m, u, -p).astype(u.dtype),
      masks, updates, params, is_leaf=_is_none)


def pruner(
    pattern: Pattern,
    score: ScoreFn,
    schedule: Schedule | None = None,
    *,
    layers: Sequence[Rule] | None = None,
    skip_first_last: bool = True,
    order: Sequence[str] | None = None,
    key: jax.Array | None = None,
) -> optax.GradientTransformation:
  """Builds a pruning transform.

  Args:
    pattern: unstructured (``ranking.Unstructured``), ``Block`` or ``NM``.
    score: ``score(weight, update, noise) -> scores`` (higher is kept); ``update`` is what the
      transform receives, i.e. the optimizer's update; ``noise`` is uniform in [0, 1) of the
      weight's shape when ``key`` is given, else None.
    schedule: when and how much to prune; default ``one_shot(0)`` (at the first update).
    layers, skip_first_last, order: which kernels (see ``selection.select``).
    key: PRNG key for the noise (split on every mask update).
  """
  schedule = schedule or one_shot()

  def plan(params: Any, warn: bool) -> list[str]:
    paths = select(params, layers, skip_first_last, order, warn=warn)
    shapes = dict(leaf_paths(params))
    for p in paths:
      pattern.check(p, tuple(shapes[p].shape))
    return paths

  def init(params):
    paths = set(plan(params, warn=True))
    if not paths:
      warnings.warn(f"pruner selected no kernel of {kernel_paths(params)}; nothing is pruned",
                    stacklevel=2)
    elif skip_first_last and order is None:
      kernels = kernel_paths(params)
      warnings.warn(f"pruner keeps {kernels[0]!r} and {kernels[-1]!r} dense as the first and last "
                    f"layer by name order; pass order=prune.call_order(model, variables, x) if "
                    f"that is not the call order", stacklevel=2)
    by_path = {p: jnp.ones(x.shape, bool) for p, x in leaf_paths(params) if p in paths}
    return PrunerState(jnp.zeros([], jnp.int32), _tree_from_paths(params, by_path), key)

  def recompute(state: PrunerState, updates: Any, params: Any) -> tuple[dict, Any]:
    paths = plan(params, warn=False)
    weights, grads = dict(leaf_paths(params)), dict(leaf_paths(updates))
    alive = dict(leaf_paths(state.masks))
    noise, new_key = {p: None for p in paths}, state.key
    if state.key is not None:  # one draw for all layers: threefry is slow to compile
      new_key, sub = jax.random.split(state.key)
      sizes = [weights[p].size for p in paths]
      cuts = list(itertools.accumulate(sizes))[:-1]
      flat = jnp.split(jax.random.uniform(sub, (sum(sizes),)), cuts)
      noise = {p: u.reshape(weights[p].shape) for p, u in zip(paths, flat)}
    scores = {p: score(weights[p], grads[p], noise[p]).astype(jnp.float32) for p in paths}
    masks = pattern.masks(scores, alive, lambda final: schedule.sparsity(state.step, final))
    return masks, new_key

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("a pruner needs the parameters: call update(updates, state, params)")
    alive = dict(leaf_paths(state.masks))
    masks, new_key = jax.lax.cond(
        schedule.is_update(state.step),
        lambda: recompute(state, updates, params),
        lambda: (alive, state.key))
    mask_tree = _tree_from_paths(params, masks)
    new_state = PrunerState(optax.safe_int32_increment(state.step), mask_tree, new_key)
    return _masked_updates(updates, params, mask_tree), new_state

  return optax.GradientTransformation(init, update)


def _find_states(tree: Any) -> list[PrunerState]:
  if isinstance(tree, PrunerState):
    return [tree]
  if isinstance(tree, Mapping):
    tree = list(tree.values())
  if isinstance(tree, (tuple, list)):
    return [s for t in tree for s in _find_states(t)]
  return []


def get_masks(opt_state: Any) -> Any:
  """The masks (bool per pruned kernel, None elsewhere) held by the one pruner in ``opt_state``."""
  states = _find_states(opt_state)
  if len(states) != 1:
    raise ValueError(f"expected exactly one pruner state in the optimizer state, found "
                     f"{len(states)}")
  return states[0].masks


def apply_masks(params: Any, masks: Any) -> Any:
  """Params with masked weights set to zero (leaves whose mask is None are unchanged)."""
  return jax.tree.map(lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
                      masks, params, is_leaf=_is_none)


def prune_once(tx: optax.GradientTransformation, params: Any,
               grads: Any | None = None) -> tuple[Any, Any]:
  """Runs ``tx`` for one step from ``init`` with zero (or the given) updates: (pruned, masks).

  With the default ``one_shot(0)`` schedule this is one-shot pruning without training.
  """
  state = tx.init(params)
  updates = jax.tree.map(jnp.zeros_like, params) if grads is None else grads
  _, state = jax.jit(tx.update)(updates, state, params)
  masks = get_masks(state)
  return apply_masks(params, masks), masks
