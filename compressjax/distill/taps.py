"""Intermediate features of an unmodified model, by '/'-joined module path.

Linen: the model runs once through ``apply`` with a method that records, with
``nn.intercept_methods``, the output of every tapped module's ``__call__`` and returns it beside
the model's output, so neither teacher nor student code is edited and a ``compress``-ed model
works too (its apply runs the same method under compression: the features are the compressed
ones). NNX: a throw-away merged copy of the module runs with the tapped submodules' classes
swapped for subclasses that record their outputs; state updates (BatchNorm statistics) are
written back to the model. A compressed NNX module records on the copy its compressed call
traces, so its features are the compressed ones, as for Linen. A module's feature is the output of its ``__call__`` (of its last
call when it is called more than once). Works under ``jit``; the path check happens while
tracing. Modules inside lifted transforms (Linen ``nn.scan``, NNX ``nnx.scan`` / ``nnx.vmap``)
cannot be tapped (in NNX their output would be a value of the transform's inner trace).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.matching import path_str


def _check_paths(paths: Any) -> set[str]:
  if isinstance(paths, str):
    raise TypeError(f"paths must be a sequence of module paths, got the string {paths!r}")
  return set(paths)


def _missing(model: Any, wanted: set[str], seen: set[str]) -> None:
  missing = sorted(wanted - seen)
  if missing:
    raise ValueError(f"tap path(s) {missing} are not modules of {type(model).__name__}; available "
                     f"paths: {', '.join(sorted(seen)) or '(none)'}")


def _call(mdl: Any, method: Any, args, kwargs):
  if method is None:
    return mdl(*args, **kwargs)
  if isinstance(method, str):
    return getattr(mdl, method)(*args, **kwargs)
  return method(mdl, *args, **kwargs)


def _tapped(mdl: nn.Module, *args: Any, wanted: frozenset, seen: set, method: Any = None,
            **kwargs: Any):
  feats: dict[str, Any] = {}

  def record(next_fun, a, k, context):
    out = next_fun(*a, **k)
    if context.method_name == "__call__" and context.module.path:
      path = path_str(context.module.path)
      seen.add(path)
      if path in wanted:
        feats[path] = out
    return out

  with nn.intercept_methods(record):
    out = _call(mdl, method, args, kwargs)
  return out, feats


def apply_with_taps(model: Any, variables: Any, *args: Any, paths: Sequence[str],
                    mutable: bool | str | Sequence[str] = False,
                    **apply_kwargs: Any) -> tuple[Any, dict[str, Any], Any]:
  """Runs the model once and returns (output, {path: feature}, mutated state).

  Linen: ``model.apply(variables, *args, mutable=mutable, **apply_kwargs)``; ``mutable`` is
  passed to ``apply`` (e.g. ``["batch_stats"]``); the state is ``{}`` when False. A ``method``
  keyword (name or function) selects the method, as in ``apply``. NNX: ``variables`` is ignored
  (pass None), ``model(*args, **apply_kwargs)`` runs and the state is ``{}``.
  Raises ValueError naming the available paths when a requested path is not a module of the model.
  """
  wanted = _check_paths(paths)
  if not isinstance(model, nn.Module):
    out, feats = _nnx_taps(model, args, apply_kwargs, wanted)
    return out, {p: feats[p] for p in paths}, {}
  seen: set[str] = set()
  if mutable is False:
    mutable_cols: Any = []
  elif isinstance(mutable, str):
    mutable_cols = [mutable]
  else:
    mutable_cols = mutable if mutable is True else list(mutable)
  method = apply_kwargs.pop("method", None)
  fn = functools.partial(_tapped, wanted=frozenset(wanted), seen=seen, method=method)
  (out, feats), state = model.apply(variables, *args, method=fn, mutable=mutable_cols,
                                    **apply_kwargs)
  _missing(model, wanted, seen)
  state = dict(state)
  state.pop("intermediates", None)
  return out, {p: feats[p] for p in paths}, state


def taps(model: Any, variables: Any, x: Any, paths: Sequence[str],
         **apply_kwargs: Any) -> dict[str, Any]:
  """{path: output of the module at path} for ``model.apply(variables, x, **apply_kwargs)``."""
  return apply_with_taps(model, variables, x, paths=paths, **apply_kwargs)[1]


def available_paths(model: Any, variables: Any, *args: Any, **apply_kwargs: Any) -> list[str]:
  """All module paths whose ``__call__`` runs in the model (traced abstractly, no compute)."""
  if not isinstance(model, nn.Module):
    from flax import nnx  # pylint: disable=g-import-not-at-top

    seen: set[str] = set()
    graphdef, state = nnx.split(model)
    jax.eval_shape(lambda st, a: _nnx_taps(nnx.merge(graphdef, st), a, dict(apply_kwargs), set(),
                                           seen=seen)[0], state, args)
    return sorted(seen)
  seen = set()
  method = apply_kwargs.pop("method", None)
  fn = functools.partial(_tapped, wanted=frozenset(), seen=seen, method=method)
  jax.eval_shape(lambda v, *a: model.apply(v, *a, method=fn, mutable=True, **apply_kwargs),
                 variables, *args)
  return sorted(seen)


# ---------------------------------------------------------------------------------------- NNX


_RECORDERS = threading.local()  # per thread: a stack of (seen, wanted, feats) of running taps


def _recorders() -> list:
  if not hasattr(_RECORDERS, "stack"):
    _RECORDERS.stack = []
  return _RECORDERS.stack


@functools.cache
def _recording_class(cls: type) -> type:
  call = cls.__call__

  def __call__(self, *args, **kwargs):
    out = call(self, *args, **kwargs)
    name = self.__dict__.get("_compressjax_tap")
    if name is not None and _recorders():
      seen, wanted, feats = _recorders()[-1]
      seen.add(name)
      if name in wanted:
        feats[name] = out
    return out

  return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__,
                                     "_compressjax_recording": True})


def _nnx_taps(model: Any, args, kwargs, wanted: set[str], seen: set[str] | None = None):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from compressjax.core import CompressedModule  # pylint: disable=g-import-not-at-top

  seen = set() if seen is None else seen
  kwargs = dict(kwargs)
  method = kwargs.pop("method", None)
  if isinstance(model, CompressedModule):
    # The compressed call merges a throw-away copy of the model and traces the method on it:
    # recording there returns the features computed under compression.
    record = lambda m, *a, **k: _record(m, method, a, k, wanted, seen)
    out, feats = model.call(record, *args, **kwargs)
  elif isinstance(model, nnx.Module):
    copy = nnx.merge(*nnx.split(model))
    out, feats = _record(copy, method, args, kwargs, wanted, seen)
    nnx.update(model, nnx.state(copy))
  else:
    raise TypeError(f"taps need a Linen or NNX module, got {type(model).__name__}")
  _missing(model, wanted, seen)
  return out, feats


def _record(copy: Any, method: Any, args, kwargs, wanted: set[str], seen: set[str]):
  """Runs ``method`` of a throw-away NNX module with its submodules' outputs recorded."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  feats: dict[str, Any] = {}
  for path, sub in nnx.iter_modules(copy):
    cls = type(sub)
    if path and "__call__" in dir(cls) and cls.__call__ is not object.__call__:
      object.__setattr__(sub, "_compressjax_tap", "/".join(str(p) for p in path))
      if not getattr(cls, "_compressjax_recording", False):
        sub.__class__ = _recording_class(cls)
  _recorders().append((seen, wanted, feats))
  try:
    out = _call(copy, method, args, kwargs)
  finally:
    _recorders().pop()
  return out, feats
