"""``compress(model, rules)``: an unmodified Linen or NNX model with transforms at its sites.

A site is an operation (see :mod:`compressjax.core.trace`); the first rule whose pattern matches
its name runs ``rule.weight`` on the parameter operand and ``rule.act`` on the activation
operand before the op (``rule.act`` / ``rule.rhs`` on the two operands of an activation x
activation op). Weights are shown to the transform as ``(*contracting axes, N)``, so scales per
channel or group follow the op, not the parameter's layout.

State of the transforms is nested by site name (``"block/attn/query/kernel"`` ->
``{"block": {"attn": {"query": {"kernel": {"weight": ..., "input": ...}}}}}``):

* Linen: learnable values in ``variables["params"]["compressjax"]`` (trained by any optimizer;
  :func:`param_labels` tells them apart), statistics in the ``quant_stats`` collection, updated
  when that collection is mutable (training, calibration). The user's own parameter tree is
  unchanged.
* NNX (:mod:`compressjax.core.nnx_compress`): ``nnx.Param`` and :class:`QuantStat` variables.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compressjax.core import trace as trace_lib
from compressjax.core.checks import check_site
from compressjax.core.matching import UnusedRuleWarning, first_match, warn_unused
from compressjax.core.rule import Rule
from compressjax.core.tree_paths import get_path, key_name, path_str, set_path
from compressjax.core.trace import ABSENT, Site

Array = jax.Array

STATS = "quant_stats"
SERVED = "served"  # serving state written by export: QArrays, activation quantizer state
SITE_PARAMS = "compressjax"  # key of the transforms' learnable values inside ``params``
NNX_SITE_PARAMS = "site_params"  # their attribute in a compressed NNX module (nnx_compress)


@dataclasses.dataclass(frozen=True)
class Compression:
  """Static description of a compressed model (hashable: safe as a jit-static field).

  Attributes:
    rules: the rules, first match wins.
    serve: serving mode: a site-handler factory ``serve(spec)`` (set by
      :func:`compressjax.export`, so the core never imports the serving layer); None: training.
    backend: kernel dispatcher backend used when serving (None: automatic).
    interceptors: Linen ``nn.intercept_methods`` interceptors entered around the model, for
      methods that act on layers other than sites (AdaBits' switchable BatchNorm). Hashable.
    absent: serving: ``(param path, shape, dtype)`` of parameters that only sites read; they are
      left out of the serving variables (their QArrays replace them).
    checks: step-time ``checkify`` checks of weights and transform parameters (see
      :mod:`compressjax.core.checks`).
  """

  rules: tuple[Rule, ...] = ()
  serve: Callable | None = None
  backend: str | None = None
  interceptors: tuple[Callable, ...] = ()
  absent: tuple[tuple[str, tuple[int, ...], str], ...] = ()
  checks: bool = False

  def rule_for(self, site: Site) -> Rule | None:
    match = first_match(self.rules, site)
    return None if match is None else match[1]


def check_flag(checks: Any) -> bool:
  if not isinstance(checks, bool):
    raise TypeError(f"compress: checks={checks!r}; expected True or False")
  return checks


def check_rules(rules: Sequence[Rule]) -> tuple[Rule, ...]:
  rules = tuple(rules)
  for i, rule in enumerate(rules):
    if not isinstance(rule, Rule):
      raise TypeError(f"rules[{i}] is {rule!r}; expected compressjax Rule(pattern=..., ...)")
  if not rules:
    warnings.warn("compress got an empty rule list: the model stays float", UnusedRuleWarning,
                  stacklevel=3)
  return rules


def compress(model: Any, rules: Sequence[Rule], *args: Any, **kwargs: Any):
  """Returns ``model`` with ``rules`` applied at its sites.

  Linen: ``compress(model, rules)`` returns a module of a subclass of the model's class (same
  fields, same parameter tree; ``isinstance`` holds) whose ``init`` / ``apply`` (any ``method``)
  run the transforms. Options: ``interceptors=``, ``checks=True`` (step-time NaN/Inf checks of
  weights and transform parameters naming the site; run the step through
  :func:`compressjax.core.checks.checked`).
  NNX: ``compress(model, rules, *example_args, **example_kwargs)`` returns an ``nnx.Module``
  whose transform state is initialised by one call on the example inputs (see
  :func:`compressjax.core.nnx_compress.compress_nnx`).
  Rules that match no site are reported (``UnusedRuleWarning``) at initialisation.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(model, nnx.Module):
    from compressjax.core.nnx_compress import compress_nnx  # pylint: disable=g-import-not-at-top

    return compress_nnx(model, rules, *args, **kwargs)
  if not isinstance(model, nn.Module):
    raise TypeError(
        f"compress expects a flax.linen.Module or flax.nnx.Module, got {type(model).__name__}")
  interceptors = tuple(kwargs.pop("interceptors", ()))
  checks = kwargs.pop("checks", False)
  if args or kwargs:
    raise TypeError("compress(linen_model, rules) takes no example inputs; pass them to init")
  spec = Compression(check_rules(rules), interceptors=interceptors, checks=check_flag(checks))
  base = unwrap_class(type(model))
  return _compressed_class(base)(**_fields(model, base), compression=spec)


def with_compression(model: Any, **changes: Any):
  """A compressed model with some :class:`Compression` fields replaced."""
  spec = getattr(model, "compression", None)
  if not isinstance(spec, Compression):
    raise TypeError(f"{type(model).__name__} is not a compressed model (use compress first)")
  if isinstance(model, nn.Module):
    return model.clone(compression=dataclasses.replace(spec, **changes))
  return model.with_compression(dataclasses.replace(spec, **changes))


def is_compressed(model: Any) -> bool:
  return isinstance(getattr(model, "compression", None), Compression)


def unwrap_class(cls: type) -> type:
  """The user's model class behind a compressed class."""
  return getattr(cls, "_compressjax_base", cls)


def uncompressed(model: nn.Module) -> nn.Module:
  """The plain Linen model behind a compressed one (same fields, no transforms)."""
  if not is_compressed(model) or not isinstance(model, nn.Module):
    return model
  base = unwrap_class(type(model))
  return base(**_fields(model, base))


def _fields(model: nn.Module, base: type) -> dict:
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(base)
          if f.init and f.name not in ("parent", "name", "compression")}


# ------------------------------------------------------------------------------------------------
# The runner shared by Linen and NNX.


@dataclasses.dataclass
class Run:
  """What one compressed call did: its trace and which rules and sites it used."""

  trace: trace_lib.Trace
  state: dict[str, Any]


def split_dynamic(tree: Any) -> tuple[list, Callable[[list], Any]]:
  """Array leaves of ``tree`` (traced) and a function rebuilding it; other leaves stay static."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  dynamic = [_is_array(x) for x in leaves]
  arrays = [x for x, d in zip(leaves, dynamic) if d]

  def rebuild(values):
    it = iter(values)
    return jax.tree_util.tree_unflatten(treedef, [next(it) if d else x
                                                  for x, d in zip(leaves, dynamic)])

  return arrays, rebuild


def _is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def run(fn: Callable, args: tuple, param_paths: list, spec: Compression,
        state_of: Callable[[trace_lib.Trace], dict], *, init: bool, update_stats: bool,
        absent: frozenset[int] = frozenset()) -> tuple[Any, Run]:
  """Traces ``fn(*args)``, applies ``spec``'s rules at the sites, and evaluates it.

  ``param_paths`` names each flat leaf of ``args`` that is a model parameter; ``absent`` holds
  the flat indices of parameters left out of serving variables (given as ShapeDtypeStructs);
  ``state_of(trace)`` gives the sites' current state by name. Returns ``(fn's output, Run)``;
  ``Run.state`` maps site names to their (new) state.
  """
  tr = trace_lib.trace(fn, args, param_paths)
  state = state_of(tr)
  if init:
    warn_unused(spec.rules, tr.site_list)
  if spec.serve:
    handler = spec.serve(spec)
  else:
    handler = functools.partial(_fake_handler, spec, init, update_stats)
  flat = jax.tree_util.tree_leaves(args)
  flat = [ABSENT if i in absent else x for i, x in enumerate(flat)]
  out, new_state = trace_lib.evaluate(tr, flat, handler, state)
  return out, Run(tr, new_state)


def _fake_handler(spec: Compression, init: bool, update_stats: bool, site: Site, ins, state):
  rule = spec.rule_for(site)
  if rule is None or rule.is_float:
    return site.bind(*ins), None
  transforms = rule.transforms_for(site)
  params = {} if state is None else dict(state["params"])
  stats = {} if state is None else dict(state["stats"])
  outs = list(ins)
  for index, (operand, t) in enumerate(zip(site.operands, transforms)):
    if t is None:
      continue
    is_weight = index == site.weight_index
    view, unview = weight_view(site) if is_weight else (lambda a: a, lambda a: a)
    x = view(ins[index])
    try:
      if init:
        # The init pass sees stats as if calibrated on its batch; model.init stores them fresh
        # (static quantizers still demand calibration), init_from stores the calibrated ones.
        p, s = t.init(x)
        calibrated = t.update(x, p, s)
        y = t.fake(x, p, calibrated)
        s = calibrated if update_stats else s
      else:
        p, s = operand_state(t, x, params, stats, operand, site)
        if spec.checks:
          check_site(site.name, operand, x, p, is_weight)
        if update_stats:
          s = t.update(x, p, s)
        y = t.fake(x, p, s)
    except ValueError as e:
      raise site_error(site, operand, x, e) from e
    params[operand], stats[operand] = p, s
    outs[index] = unview(y)
  new = {"params": params, "stats": stats} if (init or update_stats) else None
  return site.bind(*outs), new


def _merge_new(base: dict, extra: dict) -> dict:
  """``base`` plus the entries of ``extra`` it lacks (recursively); ``base`` wins."""
  out = dict(base)
  for k, v in extra.items():
    if k not in out:
      out[k] = v
    elif isinstance(out[k], dict) and isinstance(v, dict):
      out[k] = _merge_new(out[k], v)
  return out


def operand_state(t, x, params: dict, stats: dict, operand: str, site: Site):
  """``(params, stats)`` of one operand's transform; empty states rebuilt from ``t.init``."""
  p, s = params.get(operand), stats.get(operand)
  if p is None or s is None:
    empty_p, empty_s = _state_structure(t, jax.ShapeDtypeStruct(x.shape, x.dtype))
    p = _no_leaves(empty_p, site, operand) if p is None else p
    s = _no_leaves(empty_s, site, operand) if s is None else s
  return p, s


def _state_structure(t, operand: jax.ShapeDtypeStruct):
  """``jax.eval_shape(t.init, operand)``, remembered per (transform, shape, dtype) where the
  transform is hashable: every traced call of a compressed model asks it again for each
  operand whose state has no arrays (an LSQ weight's empty stats), and each ask traces
  ``init``."""
  try:
    hash(t)
  except TypeError:
    return jax.eval_shape(t.init, operand)
  return _cached_state_structure(t, operand)


@functools.lru_cache(maxsize=4096)
def _cached_state_structure(t, operand: jax.ShapeDtypeStruct):
  return jax.eval_shape(t.init, operand)


def _no_leaves(structure, site: Site, operand: str):
  """The state of a transform that has none (empty containers); a missing real state is an error."""
  if jax.tree_util.tree_leaves(structure):
    raise ValueError(
        f"site {site.name!r}: no state for its {operand} transform in the variables; initialise "
        "the compressed model (init / init_from) with the same rules")
  return structure


def site_error(site: Site, operand: str, x: Array, e: Exception) -> ValueError:
  """A transform's error re-raised naming the site, the operand and its shape."""
  if str(e).startswith("site "):
    return e
  return ValueError(f"site {site.name!r} ({site.op} {operand} of shape {tuple(x.shape)}): {e}")


def weight_view(site: Site):
  """``(view, unview)``: the weight operand as ``(*contracting, N)`` and back."""
  perm, view_shape = site.weight_layout()
  shape = site.shapes[site.weight_index]
  transposed = tuple(shape[a] for a in perm)
  inverse = tuple(int(i) for i in np.argsort(perm))
  identity = perm == tuple(range(len(perm)))

  def view(w):
    w = w if identity else jnp.transpose(w, perm)
    return w.reshape(view_shape)

  def unview(v):
    v = v.reshape(transposed)
    return v if identity else jnp.transpose(v, inverse)

  return view, unview


def split_state(state: dict[str, Any]) -> tuple[dict, dict]:
  """Flat ``{site: {"params", "stats"}}`` -> nested params tree and nested stats tree."""
  params, stats = {}, {}
  for name, st in state.items():
    for tree, part in ((params, st["params"]), (stats, st["stats"])):
      part = {k: v for k, v in part.items() if jax.tree_util.tree_leaves(v)}
      if part:
        set_path(tree, name, part)
  return params, stats


def state_reader(spec: Compression, init: bool, params: dict, stats_or_served: dict):
  """``state_of(trace)`` for :func:`run`: nothing at init; serving state (QArrays) when serving,
  looked up in ``stats_or_served``; else the nested params and stats joined per site."""

  def state_of(tr):
    if init:
      return {}
    if spec.serve:
      return {s.name: get_path(stats_or_served, s.name) for s in tr.site_list
              if get_path(stats_or_served, s.name) is not None}
    return join_state(tr.site_list, params, stats_or_served)

  return state_of


def join_state(sites: Sequence[Site], params: dict, stats: dict) -> dict[str, Any]:
  """Inverse of :func:`split_state` for the sites of a trace."""
  out = {}
  for site in sites:
    p, s = get_path(params, site.name), get_path(stats, site.name)
    if p is not None or s is not None:
      out[site.name] = {"params": p or {}, "stats": s or {}}
  return out


# ------------------------------------------------------------------------------------------------
# Linen.


def _is_mutable(mutable, collection: str) -> bool:
  if mutable is True:
    return True
  if mutable is False or mutable is None:
    return False
  if isinstance(mutable, str):
    return mutable == collection
  if isinstance(mutable, nn.DenyList):
    return collection not in (mutable.deny if not isinstance(mutable.deny, str) else [mutable.deny])
  return collection in mutable


def _without(mutable, collection: str):
  if isinstance(mutable, (list, tuple)):
    return [c for c in mutable if c != collection]
  if mutable == collection:
    return []
  return mutable


def _linen_inputs(module, variables, args, kwargs, *, rngs, method, mutable):
  """The base model's ``apply`` as a function of arrays, and what its inputs are.

  Returns ``(fn, fn_args, param_paths, absent, site_params, site_stats)``.
  """
  spec: Compression = module.compression
  base = uncompressed(module)
  variables = as_dict(variables)
  user_params = dict(variables.get("params", {}))
  site_params = user_params.pop(SITE_PARAMS, {})
  site_stats = variables.get(SERVED if spec.serve else STATS, {})
  user_vars = {k: v for k, v in variables.items() if k not in ("params", STATS, SERVED)}
  user_vars["params"] = user_params
  absent_paths = {p: jax.ShapeDtypeStruct(s, d) for p, s, d in spec.absent}
  for path, sds in absent_paths.items():
    if get_path(user_params, path) is None:
      set_path(user_params, path, sds)
  base_mutable = _without(mutable, STATS)
  dyn, rebuild = split_dynamic((args, kwargs))

  def fn(user_vars, rngs, dyn):
    a, k = rebuild(dyn)
    with _interceptors(spec.interceptors):
      return base.apply(user_vars, *a, rngs=rngs, method=method, mutable=base_mutable, **k)

  fn_args = (user_vars, rngs, dyn)
  paths, absent = [], set()
  for i, (kp, _) in enumerate(jax.tree_util.tree_flatten_with_path(fn_args)[0]):
    names = [key_name(k) for k in kp]
    is_param = len(names) >= 3 and names[0] == "0" and names[1] == "params"
    path = "/".join(names[2:]) if is_param else None
    paths.append(path)
    if path in absent_paths:
      absent.add(i)
  return fn, fn_args, paths, frozenset(absent), site_params, site_stats


def _linen_call(module, variables, args, kwargs, *, rngs, method, mutable, init,
                calibrate=True):
  """Runs the base model's ``apply`` under the compression; returns (apply's output, Run)."""
  fn, fn_args, paths, absent, site_params, site_stats = _linen_inputs(
      module, variables, args, kwargs, rngs=rngs, method=method, mutable=mutable)
  spec = module.compression
  state_of = state_reader(spec, init, site_params, site_stats)
  return run(fn, fn_args, paths, spec, state_of,
             init=init, update_stats=calibrate if init else _is_mutable(mutable, STATS),
             absent=absent)


def trace_linen(module, variables, *args, method=None, **kwargs) -> trace_lib.Trace:
  """The trace (sites) of a Linen model's ``apply`` (``variables`` may be abstract)."""
  if not is_compressed(module):
    module = _compressed_class(type(module))(**_fields(module, type(module)))
  fn, fn_args, paths, _, _, _ = _linen_inputs(module, variables, args, kwargs, rngs={},
                                              method=method, mutable=True)
  return trace_lib.trace(fn, fn_args, paths)


class _interceptors:
  def __init__(self, interceptors):
    self._interceptors = interceptors
    self._stack = []

  def __enter__(self):
    import contextlib  # pylint: disable=g-import-not-at-top

    self._exit = contextlib.ExitStack()
    self._exit.enter_context(nn.intercept_methods(_scope_interceptor))
    for interceptor in self._interceptors:
      self._exit.enter_context(nn.intercept_methods(interceptor))
    return self

  def __exit__(self, *exc):
    return self._exit.__exit__(*exc)


def _scope_interceptor(next_fun, args, kwargs, context):
  with trace_lib.scoped(path_str(context.module.path)):
    return next_fun(*args, **kwargs)


def as_dict(tree: Any) -> Any:
  if hasattr(tree, "items") and not isinstance(tree, jax.Array):
    return {k: as_dict(v) for k, v in tree.items()}
  return tree


@functools.cache
def _compressed_class(base: type) -> type:
  def init_with_output(self, rngs, *args, method=None, mutable=nn.DenyList("intermediates"),
                       capture_intermediates=False, **kwargs):
    plain = uncompressed(self)
    _, variables = plain.init_with_output(rngs, *args, method=method, mutable=mutable,
                                          capture_intermediates=capture_intermediates, **kwargs)
    rngs = rngs if isinstance(rngs, dict) else {"params": rngs}
    variables = as_dict(variables)
    out, result = _linen_call(self, variables, args, kwargs, rngs=rngs, method=method,
                              mutable=True, init=True, calibrate=False)
    params, stats = split_state(result.state)
    # Variables that interceptors create (AdaBits' switchable BatchNorm) appear only now.
    variables = _merge_new(variables, as_dict(out[1]))
    if params:
      variables["params"] = {**variables["params"], SITE_PARAMS: params}
    if stats:
      variables[STATS] = stats
    return out[0], variables

  def apply(self, variables, *args, rngs=None, method=None, mutable=False,
            capture_intermediates=False, **kwargs):
    if capture_intermediates:
      raise NotImplementedError("capture_intermediates: use compressjax.distill taps instead")
    out, result = _linen_call(self, variables, args, kwargs, rngs=rngs, method=method,
                              mutable=mutable, init=False)
    if mutable is False:
      return out
    y, updates = out
    updates = dict(as_dict(updates))
    if _is_mutable(mutable, STATS):
      _, stats = split_state(result.state)
      if stats:
        updates[STATS] = stats
    return y, updates

  def lazy_init(self, *args, **kwargs):
    raise NotImplementedError("lazy_init of a compressed model: use init")

  cls = type(
      f"Compressed{base.__name__}",
      (base,),
      {
          "__annotations__": {"compression": Compression},
          "compression": Compression(),
          "init_with_output": nn.nowrap(init_with_output),
          "apply": nn.nowrap(apply),
          "lazy_init": nn.nowrap(lazy_init),
          "__module__": base.__module__,
          "_compressjax_base": base,
      },
  )
  return cls


def param_labels(params: Any, quantizer_label: str = "quantizer", other_label: str = "model"):
  """Labels every leaf of ``params`` for ``optax.multi_transform``: transform state vs model.

  Quantizer parameters (step sizes, clip levels, bit-widths) usually get no weight decay and
  sometimes their own learning rate. ``params``: a Linen ``params`` collection, or the
  ``nnx.state(model, nnx.Param)`` of a compressed NNX model (its ``site_params``); it can be
  passed itself to ``optax.multi_transform`` as the labelling function.
  """

  def label(path, _):
    return quantizer_label if key_name(path[0]) in (SITE_PARAMS, NNX_SITE_PARAMS) else other_label

  return jax.tree_util.tree_map_with_path(label, params)


_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@functools.cache
def lean_compiler_options() -> dict:
  """``jax.jit`` compiler options for whole-model passes that run once (init_from): XLA:CPU's
  memory-minimizing scheduler, where this XLA has it ({} elsewhere). Its default schedule, tuned
  for concurrency, computes every layer's fake-quant weight (they depend on weights alone)
  before the first layer runs: a second copy of the model at the peak."""
  if jax.default_backend() != "cpu":
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=_MEMORY_SCHEDULER).lower(1.0).compile()
  except jax.errors.JaxRuntimeError:
    return {}
  return _MEMORY_SCHEDULER


def lean_jit(fn: Callable, *inputs: Any) -> Callable:
  """``jax.jit(fn)`` with :func:`lean_compiler_options` when ``inputs`` are concrete; inside an
  outer trace plainly (its own jit compiles it, and nested jits take no compiler options)."""
  nested = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(inputs))
  return jax.jit(fn, compiler_options=None if nested else lean_compiler_options())


def refuse_nnx(model: Any, what: str) -> None:
  """TypeError for an NNX model given to a Linen-variables function that NNX does not need."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(model, nnx.Module):
    raise TypeError(
        f"{what} takes a Linen model and its variables; an NNX model starts from its own "
        "weights: load the float weights into the module, then cj.compress(model, rules, x) "
        "initialises the transform state on x from them (and recomputes BatchNorm statistics)")


def init_from(model: Any, variables: dict, *args: Any, rng: Array | None = None,
              recalibrate_bn: bool | None = None, **kwargs: Any) -> dict:
  """Variables of a compressed Linen ``model`` that start from a float model's ``variables``.

  Runs one forward pass (use eval-mode kwargs, e.g. ``train=False``) on ``args`` with the float
  values in place, so transform state is initialised from the real weights and activations
  (LSQ step sizes, calibration ranges). BatchNorm statistics are then recomputed on ``args``
  under the compressed weights (see :mod:`compressjax.core.bn_recalibrate`; ``recalibrate_bn``:
  None recalibrates when a rule transforms weights). Returns all collections. How close this
  leaves the model to float: :func:`compressjax.core.fidelity.check_fidelity` on both outputs.
  """
  from compressjax.core import bn_recalibrate  # pylint: disable=g-import-not-at-top
  from compressjax.core.checks import check_finite  # pylint: disable=g-import-not-at-top

  refuse_nnx(model, "init_from")
  check_finite(variables.get("params", {}), "init_from: float variables")
  rng = jax.random.key(0) if rng is None else rng
  dyn, rebuild = split_dynamic((args, kwargs))

  # The compiled functions return only what they compute; the float arrays are put back around
  # them, not copied through them (that would hold the model twice at the peak).
  def transform_state(variables, rng, dyn):
    a, k = rebuild(dyn)
    out, result = _linen_call(model, as_dict(variables), a, k, rngs={"params": rng},
                              method=None, mutable=True, init=True)
    del out
    return split_state(result.state)

  compiled_state = lean_jit(transform_state, variables, dyn)

  def build(variables):
    params, stats = compiled_state(variables, rng, dyn)
    new = dict(as_dict(variables))
    new["params"] = {**new["params"], SITE_PARAMS: params}
    if stats:
      new[STATS] = stats
    return new

  def batch_stats(variables, dyn):
    a, k = rebuild(dyn)
    return bn_recalibrate.linen_batch_stats(model, variables, a, k)[bn_recalibrate.BATCH_STATS]

  compiled_stats = lean_jit(batch_stats, variables, dyn)
  new = build(variables)
  if bn_recalibrate.wanted(recalibrate_bn, model.compression) and (
      bn_recalibrate.BATCH_STATS in variables):
    new = bn_recalibrate.alternate(
        new, lambda v: {**v, bn_recalibrate.BATCH_STATS: compiled_stats(v, dyn)}, build)
  return new
