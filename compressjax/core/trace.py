"""Op-level sites: trace a model function to a jaxpr, find its sites, and re-run it with handlers.

Mechanism (why a jaxpr and not patched functions): the model function is traced once with
``jax.make_jaxpr``; every ``dot_general`` / ``conv_general_dilated`` equation whose operand is a
parameter, or a reshape / transpose / cast / slice of one (followed through nested ``jit``,
``scan``, ``remat`` and custom-derivative calls), is a *site*; so is an op between two
activations. The jaxpr is then evaluated equation by equation, binding every primitive as it
was, except at sites, where a handler computes the op (fake-quant, serving, recording). Nothing
is patched, so the mechanism is thread-safe and leaves nothing behind; it sees every layer,
whatever its code (``jnp.einsum`` on its own parameter, ``Embed.attend``, Linen or NNX, any
method), because all of them lower to the same primitives. ``jit``, ``grad``, ``vmap`` and
sharding apply to the evaluation as to any JAX function.

Site state flows through scans: a site inside a scan over stacked parameters keeps one state
per iteration (stacked along axis 0, like its parameter); a site inside any other scan shares
one state across iterations (carried).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
from jax import lax

try:  # what jax.core.eval_jaxpr uses to keep op names (profiles, HLO metadata) and tracebacks
  from jax._src import source_info_util as _source_info
except ImportError:  # pragma: no cover - a JAX without it: ops lose their module names only
  _source_info = None

Array = jax.Array

SITE_PRIMITIVES = ("dot_general", "conv_general_dilated")
# Primitives that keep a parameter a parameter: the op still reads the weight's values.
STRUCTURAL = frozenset({
    "reshape", "transpose", "convert_element_type", "squeeze", "expand_dims", "slice", "rev",
    "copy", "copy_p", "reduce_precision",
})
_SCOPE = "cj:"  # named-scope prefix that carries a module path into the jaxpr
_INLINE = ("jaxpr", "call_jaxpr", "fun_jaxpr")  # params holding the body of a call-like primitive


class _Absent:
  """A parameter left out of the serving variables: only sites (which have its QArray) read it."""

  def __repr__(self):
    return "ABSENT"


ABSENT = _Absent()


@dataclasses.dataclass(frozen=True)
class Origin:
  """Where a value comes from: a parameter, through ``steps`` (structural ops) and scan slices.

  ``steps`` are ``(primitive, params, depth)``: the op applied at scan depth ``depth`` (the number
  of scan slicings before it), so the operand of every stacked copy can be recomputed from the
  parameter (:func:`operand_of`).
  """

  param: str
  steps: tuple = ()
  slices: tuple = ()  # equation paths of the scans that sliced it

  @property
  def depth(self) -> int:
    return len(self.slices)


@dataclasses.dataclass(frozen=True, eq=False)
class Site:
  """One operation of the model that a rule can select.

  Attributes:
    name: ``module/param`` for an op that reads a parameter (``#i`` added for its i-th further
      use), ``module/<op>#i`` for an op between two activations.
    module: path of the module that ran the op ('' at the top, or unknown).
    param: the parameter's path, or None for an activation x activation op.
    op: ``"dot_general"`` or ``"conv_general_dilated"``.
    primitive: the JAX primitive (bound with ``params`` to run the op).
    weight_index: which operand (0 lhs, 1 rhs) is the parameter; None for activation x activation.
    shapes: the two operands' shapes as the op sees them; dtypes likewise.
    params: the equation's parameters (dimension numbers, padding, ...).
    origin: how the weight operand derives from the parameter.
    stack: equation paths of the scans that stack this site's state (outermost first).
    stack_lengths: their lengths (the leading axes of the site's stacked state).
  """

  name: str
  module: str
  param: str | None
  op: str
  primitive: Any
  weight_index: int | None
  shapes: tuple[tuple[int, ...], tuple[int, ...]]
  dtypes: tuple[Any, Any]
  params: dict
  origin: Origin | None
  stack: tuple[tuple, ...] = ()
  stack_lengths: tuple[int, ...] = ()

  @property
  def has_weight(self) -> bool:
    return self.weight_index is not None

  @property
  def operands(self) -> tuple[str, str]:
    """State keys of the two operands (lhs, rhs)."""
    if self.weight_index is None:
      return ("lhs", "rhs")
    return ("weight", "input") if self.weight_index == 0 else ("input", "weight")

  def bind(self, lhs: Array, rhs: Array) -> Array:
    """The op itself on (possibly transformed) operands."""
    return self.primitive.bind(lhs, rhs, **self.params)

  def contracting(self, index: int) -> tuple[int, ...]:
    """Axes of operand ``index`` that the op sums over, in the op's pairing order."""
    if self.op == "dot_general":
      return tuple(self.params["dimension_numbers"][0][index])
    spec = self.params["dimension_numbers"]
    if index == 1:
      return (*spec.rhs_spec[2:], spec.rhs_spec[1])
    return (*spec.lhs_spec[2:], spec.lhs_spec[1])

  def weight_layout(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(perm, view_shape)``: the weight as ``(*contracting, N)``, ``N`` = the other axes.

    Quantizers see this view, so per-channel means one scale per output feature of the op (every
    non-contracting axis) and groups run along the contracting axes, whatever the layout.
    """
    shape = self.shapes[self.weight_index]
    contract = self.contracting(self.weight_index)
    rest = tuple(a for a in range(len(shape)) if a not in contract)
    perm = (*contract, *rest)
    return perm, (*(shape[a] for a in contract), math.prod(shape[a] for a in rest))


@dataclasses.dataclass
class Trace:
  """A traced model function and its sites."""

  closed: Any  # ClosedJaxpr
  in_tree: Any
  out_tree: Any
  sites: dict[tuple, Site]  # by equation path
  param_uses: dict[str, list[str]]  # parameter -> what reads it ("site <name>" or a primitive)

  @property
  def site_list(self) -> list[Site]:
    return list(self.sites.values())


def trace(fn: Callable, args: Sequence[Any], param_paths: Sequence[str | None]) -> Trace:
  """Traces ``fn(*args)``; ``param_paths[i]`` names the i-th flat input leaf (None: not a param)."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  in_tree = jax.tree_util.tree_structure(tuple(args))
  out_tree = jax.tree_util.tree_structure(out_shape)
  origins = [None if p is None else Origin(p) for p in param_paths]
  analysis = _Analysis()
  analysis.walk(closed.jaxpr, origins, (), "", ())
  return Trace(closed, in_tree, out_tree, analysis.sites, analysis.uses)


def operand_of(site: Site, param: Array) -> Array:
  """The weight operand of ``site`` computed from its parameter (stacked: leading axes)."""
  x = param
  for prim, params, depth in site.origin.steps:
    f = lambda a, prim=prim, params=params: prim.bind(a, **params)
    for _ in range(depth):
      f = jax.vmap(f)
    x = f(x)
  return x


# ------------------------------------------------------------------------------------------------
# Analysis: which equations are sites, named how.


class _Analysis:

  def __init__(self):
    self.sites: dict[tuple, Site] = {}
    self.uses: dict[str, list[str]] = {}
    self._param_count: dict[str, int] = {}
    self._scope_count: dict[str, int] = {}

  def walk(self, jaxpr, origins, path: tuple, module: str, stack: tuple):
    env = dict(zip(jaxpr.invars, origins))
    get = lambda v: None if isinstance(v, jcore.Literal) else env.get(v)
    for i, eqn in enumerate(jaxpr.eqns):
      here = (*path, i)
      mod = _module_of(eqn, module)
      ins = [get(v) for v in eqn.invars]
      name = eqn.primitive.name
      outs = [None] * len(eqn.outvars)
      if name in SITE_PRIMITIVES:
        self._site(eqn, ins, here, mod, stack)
      elif name in STRUCTURAL and ins and ins[0] is not None:
        o = ins[0]
        outs = [Origin(o.param, (*o.steps, (eqn.primitive, dict(eqn.params), o.depth)), o.slices)]
      elif name == "scan":
        outs = self._scan(eqn, ins, here, mod, stack)
      elif _body(eqn) is not None and name not in ("while", "cond"):
        sub = _body(eqn)
        outs = self._inline(sub, ins, here, mod, stack)
      else:
        for o in ins:
          if o is not None:
            self.uses.setdefault(o.param, []).append(name)
      env.update({v: o for v, o in zip(eqn.outvars, outs) if o is not None})
    for v in jaxpr.outvars:
      o = get(v)
      if o is not None and o.steps:
        self.uses.setdefault(o.param, []).append("output")

  def _inline(self, sub, ins, here, mod, stack):
    jaxpr = getattr(sub, "jaxpr", sub)
    self.walk(jaxpr, ins, (*here, 0), mod, stack)
    # Structural pass-through (e.g. a jitted reshape) is not followed out of calls.
    return [None] * len(jaxpr.outvars)

  def _scan(self, eqn, ins, here, mod, stack):
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    xs = ins[n_consts + n_carry:]
    layer_scan = any(o is not None for o in xs)
    body_ins = list(ins[:n_consts]) + [None] * n_carry + [
        None if o is None else Origin(o.param, o.steps, (*o.slices, here)) for o in xs
    ]
    inner_stack = (*stack, (here, p["length"])) if layer_scan else stack
    self.walk(p["jaxpr"].jaxpr, body_ins, (*here, 0), mod, inner_stack)
    return [None] * len(eqn.outvars)

  def _site(self, eqn, ins, here, mod, stack):
    weight = [i for i, o in enumerate(ins) if o is not None]
    avals = [v.aval for v in eqn.invars]
    if len(weight) == 2:  # parameter x parameter (e.g. a LoRA product): not a site
      for o in ins:
        self.uses.setdefault(o.param, []).append(eqn.primitive.name + " of two parameters")
      return
    if weight:
      index = weight[0]
      origin = ins[index]
      count = self._param_count.get(origin.param, 0)
      self._param_count[origin.param] = count + 1
      name = origin.param + (f"#{count}" if count else "")
      module = origin.param.rpartition("/")[0]
      self.uses.setdefault(origin.param, []).append("site " + name)
    else:
      if any(isinstance(v, jcore.Literal) for v in eqn.invars):
        return
      index, origin, module = None, None, mod
      count = self._scope_count.get((mod, eqn.primitive.name), 0)
      self._scope_count[(mod, eqn.primitive.name)] = count + 1
      name = f"{mod}/{eqn.primitive.name}#{count}" if mod else f"{eqn.primitive.name}#{count}"
    # In a scan over stacked params, a weight site's state is stacked iff its weight is sliced.
    lengths = dict(stack)
    site_stack = tuple(p for p, _ in stack) if origin is None else origin.slices
    self.sites[here] = Site(
        name=name, module=module, param=None if origin is None else origin.param,
        op=eqn.primitive.name, primitive=eqn.primitive, weight_index=index,
        shapes=(tuple(avals[0].shape), tuple(avals[1].shape)),
        dtypes=(avals[0].dtype, avals[1].dtype), params=dict(eqn.params), origin=origin,
        stack=site_stack, stack_lengths=tuple(lengths[p] for p in site_stack),
    )


def _body(eqn):
  for key in _INLINE:
    sub = eqn.params.get(key)
    if sub is not None and hasattr(getattr(sub, "jaxpr", sub), "eqns"):
      return sub
  return None


def _module_of(eqn, default: str) -> str:
  """The innermost module path that a ``cj:`` named scope put on the equation."""
  stack = str(eqn.source_info.name_stack)
  at = stack.rfind(_SCOPE)
  if at < 0:
    return default
  return stack[at + len(_SCOPE):].split("/")[0].replace("|", "/")


def scoped(path: str):
  """A named scope that marks the equations traced inside it as belonging to module ``path``."""
  return jax.named_scope(_SCOPE + path.replace("/", "|"))


# ------------------------------------------------------------------------------------------------
# Evaluation with handlers at the sites.

Handler = Callable[[Site, list, Any], tuple[Any, Any]]


def evaluate(tr: Trace, flat_args: Sequence[Any], handler: Handler, state: dict[str, Any]):
  """Runs the traced function on its flat inputs with ``handler(site, operands, state) -> (out,
  new state or None)`` at every site; returns ``(output pytree, new state by site name)``.

  ``state`` maps site names to that site's state (stacked for sites in scans over stacked
  params); a site's entry may be missing (the handler then creates it, e.g. at init).
  """
  ev = _Evaluator(tr.sites, handler)
  outs, new_state = ev.run(tr.closed.jaxpr, tr.closed.consts, list(flat_args), (), dict(state))
  return jax.tree_util.tree_unflatten(tr.out_tree, outs), new_state


class _Evaluator:

  def __init__(self, sites: dict[tuple, Site], handler: Handler):
    self.sites = sites
    self.handler = handler
    self._enclosing = {p[:n] for p in sites for n in range(1, len(p))}  # paths with sites inside

  def inside(self, path: tuple) -> list[Site]:
    n = len(path)
    return [s for p, s in self.sites.items() if p[:n] == path and len(p) > n]

  def run(self, jaxpr, consts, args, path, state):
    env: dict = {}
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    dead = _dead_after(jaxpr)
    for i, eqn in enumerate(jaxpr.eqns):
      with _as_traced(eqn):
        outs = self._eqn(eqn, [read(v) for v in eqn.invars], (*path, i), state)
      env.update(zip(eqn.outvars, outs))
      for v in dead.get(i, ()):  # run eagerly, intermediates are freed as in jax.core.eval_jaxpr
        env.pop(v, None)
    return [read(v) for v in jaxpr.outvars], state

  def _eqn(self, eqn, ins, here, state) -> list:
    """The outputs of one equation: the handler at a site, else the primitive (or the
    sub-jaxpr it calls, when sites lie inside)."""
    site = self.sites.get(here)
    if site is not None:
      out, new = self.handler(site, ins, state.get(site.name))
      if new is not None:
        state[site.name] = new
      return [out]
    if here not in self._enclosing:
      if any(x is ABSENT for x in ins):
        return self._absent(eqn, ins)
      outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
      return outs if eqn.primitive.multiple_results else [outs]
    if eqn.primitive.name == "scan":
      return self._scan(eqn, ins, here, state)
    if eqn.primitive.name in ("checkpoint", "remat"):
      return self._remat(eqn, ins, here, state)
    if eqn.primitive.name in ("while", "cond"):
      raise NotImplementedError(
          f"sites {[s.name for s in self.inside(here)]} are inside lax.{eqn.primitive.name}; "
          "compressjax follows scan, jit, remat and custom-derivative calls only"
      )
    sub = _body(eqn)
    jaxpr_ = getattr(sub, "jaxpr", sub)
    return self.run(jaxpr_, getattr(sub, "consts", ()), ins, (*here, 0), state)[0]

  def _absent(self, eqn, ins):
    if eqn.primitive.name in STRUCTURAL or _body(eqn) is not None or eqn.primitive.name == "scan":
      # Only sites read it: whatever is computed from it here is never used.
      return [ABSENT] * len(eqn.outvars)
    raise ValueError(
        f"a parameter left out of the serving variables is read by {eqn.primitive.name!r}, "
        "which is not a site; export keeps such parameters"
    )

  def _remat(self, eqn, ins, here, state):
    sub = eqn.params["jaxpr"]
    names = [s.name for s in self.inside(here)]

    def body(ins, st):
      outs, st = self.run(sub, (), ins, (*here, 0), dict(st))
      return outs, {k: st[k] for k in names if k in st}

    f = jax.checkpoint(body, prevent_cse=eqn.params.get("prevent_cse", True),
                       policy=eqn.params.get("policy"))
    outs, new = f(ins, {k: state[k] for k in names if k in state})
    state.update(new)
    return outs

  def _scan(self, eqn, ins, here, state):
    p = eqn.params
    n_consts, n_carry = p["num_consts"], p["num_carry"]
    consts, carry, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
    inner = self.inside(here)
    stacked = [s.name for s in inner if here in s.stack]
    carried = [s.name for s in inner if here not in s.stack]
    fresh = {k for k in carried if k not in state}  # created in the loop (init): kept from step 0
    body_jaxpr = p["jaxpr"]
    # ABSENT inputs (serving) stay outside the loop: only sites read them. The body may pass
    # them through to its outputs (an NNX scan returns its layers' parameters): those come out
    # ABSENT again.
    live = lambda values: [v for v in values if v is not ABSENT]
    absent_ys = []

    def refill(values, template):
      it = iter(values)
      return [ABSENT if t is ABSENT else next(it) for t in template]

    def body(c, x):
      carry_vals, carry_state = c
      x_vals, x_state = x
      st = {**carry_state, **x_state}
      args = [*refill(live(consts), consts), *refill(carry_vals, carry), *refill(x_vals, xs)]
      outs, st = self.run(body_jaxpr.jaxpr, body_jaxpr.consts, args, (*here, 0), st)
      if [o is ABSENT for o in outs[:n_carry]] != [c is ABSENT for c in carry]:
        raise ValueError(
            f"a scan around sites {[s.name for s in inner]} carries a parameter left out of the "
            "serving variables into a value that is not a site; export keeps such parameters")
      absent_ys[:] = [y is ABSENT for y in outs[n_carry:]]
      new_carry = {k: st[k] for k in carried if k in st and k not in fresh}
      made = {k: st[k] for k in fresh if k in st}
      return ((live(outs[:n_carry]), new_carry),
              (live(outs[n_carry:]), {k: st[k] for k in stacked if k in st}, made))

    (carry_out, carry_state), (ys, ys_state, made) = lax.scan(
        body,
        (live(carry), {k: state[k] for k in carried if k in state}),
        (live(xs), {k: state[k] for k in stacked if k in state}),
        length=p["length"], reverse=p["reverse"], unroll=p["unroll"],
    )
    carry_out = refill(carry_out, carry)
    ys = refill(ys, [ABSENT if a else None for a in absent_ys])
    state.update(ys_state)
    state.update(carry_state)
    state.update({k: jax.tree_util.tree_map(lambda a: a[0], v) for k, v in made.items()})
    return [*carry_out, *ys]


def _as_traced(eqn):
  """The context ``eqn`` was traced in (its name stack under the current one, its traceback,
  its equation context), as ``jax.core.eval_jaxpr`` re-enters it: the re-evaluated ops keep
  their module names in HLO metadata and profiles, and quantizer ops get their site's."""
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  stack = contextlib.ExitStack()
  if _source_info is not None:
    ours = eqn.source_info.name_stack  # less the cj: markers of the trace (see scoped)
    ours = type(ours)(tuple(e for e in ours.stack if not e.name.startswith(_SCOPE)))
    names = _source_info.current_name_stack() + ours
    stack.enter_context(_source_info.user_context(eqn.source_info.traceback, name_stack=names))
  if ctx is not None:
    stack.enter_context(ctx)
  return stack


def _dead_after(jaxpr) -> dict[int, list]:
  """Equation index -> the variables that no later equation nor the output reads."""
  last = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if not isinstance(v, jcore.Literal):
        last[v] = i
    for v in eqn.outvars:
      last.setdefault(v, i)  # never read: dead at once
  kept = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
  dead: dict[int, list] = {}
  for v, i in last.items():
    if v not in kept:
      dead.setdefault(i, []).append(v)
  return dead
