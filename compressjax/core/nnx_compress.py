"""``compress`` for Flax NNX: the user's ``nnx.Module`` with transforms at its sites.

``compress(model, rules, *example_args)`` traces one call on the example inputs, creates the
transforms' state there (learnable values as ``nnx.Param``, so ``nnx.Optimizer(..., wrt=
nnx.Param)`` trains them with the model; statistics as :class:`QuantStat`), and returns a
:class:`CompressedModule` holding the user's module (shared, not copied) and that state. Calling
it (``__call__`` or any method of the model) runs the model as a pure function of its state
(``nnx.split`` / ``merge``) through the same site machinery as Linen, then writes the model's
mutated state (BatchNorm statistics, RNG counters) back. Statistics are updated unless
``use_running_average`` is True, which ``model.eval()`` sets, as for ``nnx.BatchNorm``.

``interceptors=`` takes one *variable switch* (AdaBits' ``SwitchableBN``): the module keeps a
copy of the switched submodules' variables per key (``switches``) and swaps the active key's
into the model around each call (:func:`switched_in`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from compressjax.core import trace as trace_lib
from compressjax.core.compress import (Compression, check_flag, check_rules, lean_jit, run,
                                       split_dynamic, split_state, state_reader)
from compressjax.core.tree_paths import flat_paths, leaf_name
from compressjax.qarray import QArray


@dataclasses.dataclass(frozen=True)
class Example:
  """The call a compressed NNX module was traced with (shapes only): export re-traces it."""

  method: str
  args: tuple
  kwargs: dict


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x, tree)


class QuantStat(nnx.Variable):
  """Statistics of a transform (calibrated ranges, EMAs, counts): updated, never trained."""


class Served(nnx.Variable):
  """Serving state of a site (QArrays, activation scales) written by export."""


def compress_nnx(model: nnx.Module, rules, *args: Any, **kwargs: Any) -> CompressedModule:
  """See the module docstring; ``method=`` names the model method the example inputs call;
  ``recalibrate_bn=`` as for :func:`compressjax.core.init_from` (BatchNorm statistics
  recomputed on the example inputs under the compressed weights)."""
  from compressjax.core import bn_recalibrate  # pylint: disable=g-import-not-at-top

  method = kwargs.pop("method", "__call__")
  interceptors = _switch_interceptors(kwargs.pop("interceptors", ()))
  spec = Compression(check_rules(rules), interceptors=interceptors,
                     checks=check_flag(kwargs.pop("checks", False)))
  recalibrate = bn_recalibrate.wanted(kwargs.pop("recalibrate_bn", None), spec)
  graphdef, model_state = nnx.split(model)
  dyn, rebuild = split_dynamic((args, kwargs))

  # Jitted like Linen's init_from (the same float rounding, the same lean schedule); it returns
  # what it computes, not the model's arrays (a second copy at the peak).
  def init(model_state, dyn):
    m = nnx.merge(graphdef, model_state)
    a, k = rebuild(dyn)
    init_state = lambda: split_state(_call(m, spec, {}, method, a, k, init=True,
                                           update_stats=True)[0])
    params, stats = init_state()
    if recalibrate:
      # A second merged copy in batch-statistics mode writes its BatchNorm statistics into m.
      recal = nnx.merge(graphdef, nnx.state(m))
      if bn_recalibrate.nnx_batch_statistics_mode(recal):

        def recompute(state):
          _call(recal, spec, dict(zip(("params", "stats"), state)), method, a, k, init=False,
                update_stats=False)
          nnx.update(m, nnx.state(recal, nnx.BatchStat))
          return state

        params, stats = bn_recalibrate.alternate((params, stats), recompute,
                                                 lambda _: init_state())
    return (params, stats), nnx.state(m, nnx.Not(nnx.Param))  # BatchNorm statistics, RNG counts

  (params, stats), changed = lean_jit(init, model_state, dyn)(model_state, dyn)
  nnx.update(model, changed)
  out = CompressedModule(model, spec, params, stats,
                         example=Example(method, _abstract(args), _abstract(kwargs)))
  out.switches = nnx.data(_make_switches(model, interceptors))
  return out


def _switch_interceptors(interceptors) -> tuple:
  """The interceptors an NNX model takes: variable switches (see :func:`_make_switches`)."""
  interceptors = tuple(interceptors)
  for i in interceptors:
    if not callable(getattr(i, "switched_module", None)):
      raise TypeError(
          f"compress: an NNX model takes interceptors that switch module variables (with "
          f"switch_keys, active_key and switched_module(module), e.g. AdaBits' SwitchableBN); "
          f"{i!r} is a Linen method interceptor")
  if len(interceptors) > 1:
    raise ValueError(f"compress: at most one variable switch per NNX model, got {interceptors}")
  return interceptors


def _make_switches(model: nnx.Module, interceptors: tuple) -> dict:
  """``{key: {module path: {attribute: Variable}}}``: for every key of the switch, a copy of
  each switched submodule's variables (AdaBits: each BatchNorm's scale, bias, mean, var per
  bit-width), starting from the model's own."""
  if not interceptors:
    return {}
  (switch,) = interceptors
  modules = {"/".join(map(str, path)): m for path, m in nnx.iter_modules(model)
             if path and switch.switched_module(m)}
  return {k: {p: {a: type(v)(v.get_value()) for a, v in vars(m).items()
                  if isinstance(v, nnx.Variable)} for p, m in modules.items()}
          for k in switch.switch_keys}


def _submodule(model: nnx.Module, path: str) -> nnx.Module:
  for part in path.split("/"):
    model = model[int(part)] if part.isdigit() else getattr(model, part)
  return model


@contextlib.contextmanager
def switched_in(module: CompressedModule):
  """For the duration of a call, the wrapped model's switched variables hold the active
  switch's values; afterwards the switch takes their new values (updated statistics) and the
  model gets its own back."""
  switches = module.switches
  if not switches:
    yield
    return
  (switch,) = module.compression.interceptors
  active = switches[switch.active_key]
  model = module.model
  saved = {}
  for path, variables in active.items():
    sub = _submodule(model, path)
    for attr, var in variables.items():
      saved[path, attr] = getattr(sub, attr).get_value()
      getattr(sub, attr).set_value(var.get_value())
  try:
    yield
  finally:
    for (path, attr), value in saved.items():
      own = getattr(_submodule(model, path), attr)
      active[path][attr].set_value(own.get_value())
      own.set_value(value)


class CompressedModule(nnx.Module):
  """An NNX model with transforms at its sites (see the module docstring)."""

  def __init__(self, model: nnx.Module, spec: Compression, params: dict, stats: dict,
               served: dict | None = None, example: Example | None = None):
    self.model = model
    self.compression = spec
    self.example = example
    self.use_running_average = False
    self.site_params = nnx.data(_wrap(params, nnx.Param))
    self.site_stats = nnx.data(_wrap(stats, QuantStat))
    self.served = nnx.data(_wrap(served or {}, Served))
    self.switches = nnx.data({})  # variable switches (AdaBits' per-bit BatchNorm): compress_nnx

  def __call__(self, *args, **kwargs):
    return self.call("__call__", *args, **kwargs)

  def call(self, method: str | Callable, *args, **kwargs):
    """Runs ``method`` of the model under the compression: a method name, or a function called
    as ``method(model, *args, **kwargs)`` (as Linen's ``apply(method=...)``)."""
    state = {kind: self.site_values(kind) for kind in ("params", "stats", "served")}
    update = not self.use_running_average and not self.compression.serve
    with switched_in(self):
      new, out = _call(self.model, self.compression, state, method, args, kwargs, init=False,
                       update_stats=update)
    if update:
      _, stats = split_state(new)
      _assign(self.site_stats, stats)
    return out

  def __getattr__(self, name: str):
    # Only reached for names the wrapper lacks: forward the model's methods under compression.
    if name.startswith("_") or name in ("model", "compression"):
      raise AttributeError(name)
    model = self.__dict__.get("model")
    if model is not None and callable(getattr(type(model), name, None)):
      return functools.partial(self.call, name)
    raise AttributeError(f"{type(self).__name__} (over {type(model).__name__}) has no {name!r}")

  def site_values(self, kind: str = "params") -> dict:
    """The sites' learnable values (``"params"``: Linen's ``params["compressjax"]``),
    statistics (``"stats"``) or serving state (``"served"``) as plain arrays (QArrays), nested
    by site name; tracers inside ``nnx.grad``, so costs of the parameters differentiate."""
    return _unwrap(self._site_variables(kind))

  def set_site_values(self, values: dict, kind: str = "params") -> None:
    """Writes ``values`` (nested like :meth:`site_values`) into the sites' variables."""
    _assign({kind: self._site_variables(kind)}, {kind: values})

  def _site_variables(self, kind: str) -> dict:
    by_kind = {"params": self.site_params, "stats": self.site_stats, "served": self.served}
    if kind not in by_kind:
      raise ValueError(f"kind={kind!r} is not allowed; use one of {sorted(by_kind)}")
    return by_kind[kind]

  def with_compression(self, spec: Compression) -> CompressedModule:
    """The same model and state (shared variables: training either trains both) under
    ``spec`` (AdaBits' ``at_bits``: another active bit-width)."""
    out = CompressedModule(self.model, spec, {}, {}, None, self.example)
    for name in ("site_params", "site_stats", "served", "switches"):
      setattr(out, name, nnx.data(getattr(self, name)))
    out.use_running_average = self.use_running_average
    return out


def trace_nnx(model: nnx.Module, args, kwargs, *, method: str = "__call__") -> trace_lib.Trace:
  """The trace (sites) of one call of an NNX model."""
  model = model.model if isinstance(model, CompressedModule) else model
  fn, fn_args, paths, _ = _inputs(model, Compression(), method, args, kwargs)
  return trace_lib.trace(fn, fn_args, paths)


def _inputs(model, spec: Compression, method, args, kwargs):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  absent = {p: jax.ShapeDtypeStruct(s, d) for p, s, d in spec.absent}
  dyn, rebuild = split_dynamic((args, kwargs))

  def fn(params, rest, dyn):
    m = nnx.merge(graphdef, params, rest)
    _scope_modules(m)
    a, k = rebuild(dyn)
    out = method(m, *a, **k) if callable(method) else getattr(m, method)(*a, **k)
    return out, nnx.state(m, nnx.Not(nnx.Param))

  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths, absent_idx, values = [], set(), []
  for i, (kp, leaf) in enumerate(leaves):
    path = leaf_name(kp)
    paths.append(path)
    if path in absent:
      absent_idx.add(i)
      leaf = absent[path]
    values.append(leaf)
  params = jax.tree_util.tree_unflatten(treedef, values)
  rest_leaves = len(jax.tree_util.tree_leaves((rest, dyn)))
  return fn, (params, rest, dyn), paths + [None] * rest_leaves, frozenset(absent_idx)




def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Every ``nnx.Param`` of ``model`` (of the wrapped model, for a compressed one) by name."""
  model = model.model if isinstance(model, CompressedModule) else model
  return {p: tuple(leaf.shape) for p, leaf in flat_paths(nnx.state(model, nnx.Param))}


def _call(model, spec: Compression, state: dict, method: str, args, kwargs, *, init: bool,
          update_stats: bool):
  fn, fn_args, paths, absent = _inputs(model, spec, method, args, kwargs)
  state_of = state_reader(spec, init, state.get("params", {}),
                          state.get("served" if spec.serve else "stats") or {})

  (out, rest), result = run(fn, fn_args, paths, spec, state_of, init=init,
                            update_stats=update_stats, absent=absent)
  nnx.update(model, rest)
  return result.state, out


@functools.cache
def _scoped_class(cls: type) -> type:
  call = cls.__call__

  def __call__(self, *args, **kwargs):
    with trace_lib.scoped(self.__dict__.get("_compressjax_path", "")):
      return call(self, *args, **kwargs)

  return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__})


def _scope_modules(m: nnx.Module) -> None:
  """Gives every submodule of a merged (throw-away) copy a named scope of its path."""
  for path, sub in nnx.iter_modules(m):
    cls = type(sub)
    if path and "__call__" in dir(cls) and cls.__call__ is not object.__call__:
      object.__setattr__(sub, "_compressjax_path", "/".join(str(p) for p in path))
      if not getattr(cls, "_compressjax_scoped", False):
        scoped = _scoped_class(cls)
        scoped._compressjax_scoped = True
        sub.__class__ = scoped


def _wrap(tree: dict, kind: type) -> dict:
  return jax.tree_util.tree_map(kind, tree, is_leaf=lambda x: isinstance(x, QArray))


def _unwrap(tree: dict) -> dict:
  return jax.tree_util.tree_map(lambda v: v.get_value(), tree,
                                is_leaf=lambda x: isinstance(x, nnx.Variable))


def _assign(variables: dict, values: dict) -> None:
  """Writes ``values`` into the matching Variables of ``variables`` (same nesting)."""
  for key, value in values.items():
    jax.tree_util.tree_map(lambda var, x: var.set_value(x), variables[key], value,
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
