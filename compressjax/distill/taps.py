"""Intermediate features of an unmodified Flax Linen model, by '/'-joined module path.

Uses ``capture_intermediates`` with a filter, so neither teacher nor student code is edited. A
module's feature is the output of its ``__call__`` (of its last call when it is called more than
once). Works under ``jit``; the path check happens while tracing.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.matching import path_str


def apply_with_taps(model: nn.Module, variables: Any, *args: Any, paths: Sequence[str],
                    mutable: bool | str | Sequence[str] = False,
                    **apply_kwargs: Any) -> tuple[Any, dict[str, Any], Any]:
  """Runs ``model.apply`` once and returns (output, {path: feature}, mutated state).

  ``mutable`` is passed to ``apply`` (e.g. ``["batch_stats"]``); the state is ``{}`` when False.
  Raises ValueError naming the available paths when a requested path is not a module of the model.
  """
  if isinstance(paths, str):
    raise TypeError(f"paths must be a sequence of module paths, got the string {paths!r}")
  wanted = set(paths)
  seen: set[str] = set()

  def capture(mdl: nn.Module, method_name: str) -> bool:
    if method_name != "__call__" or not mdl.path:
      return False
    path = path_str(mdl.path)
    seen.add(path)
    return path in wanted

  if mutable is False:
    mutable_cols: Any = []
  elif isinstance(mutable, str):
    mutable_cols = [mutable]
  else:
    mutable_cols = mutable if mutable is True else list(mutable)
  out, state = model.apply(variables, *args, capture_intermediates=capture, mutable=mutable_cols,
                           **apply_kwargs)
  missing = sorted(wanted - seen)
  if missing:
    raise ValueError(f"tap path(s) {missing} are not modules of {type(model).__name__}; available "
                     f"paths: {', '.join(sorted(seen)) or '(none)'}")
  state = dict(state)
  inter = state.pop("intermediates", {})
  feats = {p: _lookup(inter, p) for p in paths}
  return out, feats, state


def taps(model: nn.Module, variables: Any, x: Any, paths: Sequence[str],
         **apply_kwargs: Any) -> dict[str, Any]:
  """{path: output of the module at path} for ``model.apply(variables, x, **apply_kwargs)``."""
  return apply_with_taps(model, variables, x, paths=paths, **apply_kwargs)[1]


def _lookup(intermediates: Any, path: str) -> Any:
  node = intermediates
  for name in path.split("/"):
    node = node[name]
  return node["__call__"][-1]


def available_paths(model: nn.Module, variables: Any, *args: Any, **apply_kwargs: Any) -> list[str]:
  """All module paths whose ``__call__`` runs in ``model.apply`` (traced abstractly, no compute)."""
  seen: set[str] = set()

  def record(mdl: nn.Module, method_name: str) -> bool:
    if method_name == "__call__" and mdl.path:
      seen.add(path_str(mdl.path))
    return False

  jax.eval_shape(lambda v, *a: model.apply(v, *a, capture_intermediates=record, mutable=True,
                                           **apply_kwargs), variables, *args)
  return sorted(seen)
