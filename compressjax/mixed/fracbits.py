"""FracBits (Yang & Jin, 2021): learnable fractional bit-widths under a BitOPs or size budget.

Every searchable operand (a site's kernel, or its input after the PACT clip) has a learnable
bit-width ``lambda`` (one per layer, or one per output channel: "kernel-wise"), clamped to
``[min_bits, max_bits]`` and initialised to ``target_bits + 0.5``. With ``f = floor(lambda)``::

    W^ = (lambda - f) * Q_{f+1}(w) + (1 + f - lambda) * Q_f(w)

where ``Q_k`` is the base quantizer (SAT, DoReFa, PACT, ...) at ``k`` bits and ``Q_0 = 0``
(pruning in the same framework). ``f`` has no gradient and ``Q`` uses STE, so
``d W^ / d lambda = Q_{f+1}(w) - Q_f(w)``.

The search minimises ``CE + kappa * |cost(lambda) - target|`` (:class:`Budget`; cost is
``sum_l MACs_l * lambda_w_l * lambda_a_l``, or the model size), then :func:`harden` rounds,
``lambda <- round(lambda + offset)`` with ``offset`` found by bisection so the integer model's
cost is within ``tol`` (1%) of the target, preferably at or under it, and returns a
:class:`~compressjax.mixed.report.BitAllocation`; :func:`~compressjax.mixed.report.rules_from_json`
turns it into fixed-bit rules for fine-tuning. The first site keeps ``edge_bits`` weights and a
float input, the last site ``edge_bits`` weights and inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compressjax.core.compress import SITE_PARAMS
from compressjax.core.matching import first_match
from compressjax.core.sites import discover
from compressjax.core.tree_paths import get_path, key_name
from compressjax.cost import Profile
from compressjax.mixed.adabits import Switchable
from compressjax.mixed.budget import Budget, check_profile
from compressjax.mixed.common import (DEFAULT_METHOD, Method, compress_on, edge_rules,
                                      quantizers, transfer)
from compressjax.mixed.common import start_from_float as init_from_float
from compressjax.mixed.interp import ChannelBits, check_levels, mix
from compressjax.mixed.report import BitAllocation
from compressjax.quant.base import Quantizer

Array = jax.Array
State = dict[str, Array]
LAMBDA = "lambda"

# init_from_float: search (or fine-tune) variables from a float model's, PACT clip levels from
# its activations; transfer: carries weights, BatchNorm and clip levels from the search
# variables into the fixed-bit model built by ``rules_from_json``.
__all__ = ["Budget", "ChannelBits", "FracBits", "clamp_lambdas", "fracbits", "harden",
           "init_from_float", "search_cost", "site_bits", "transfer"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FracBits:
  """A transform with a learnable fractional bit-width ``lambda`` (see the module docstring).

  State: ``params = {"lambda": (), or (channels,), **base params}`` (PACT's ``alpha`` keeps
  its name, so a fixed-bit model built from the allocation can take it over), ``stats`` the
  base's; the core keeps it at ``params["compressjax"][<site name>]["weight" | "input"]``.
  A search model has no integer export: :func:`harden` it, build the fixed-bit model from the
  allocation (``rules_from_json``) and export that.

  Attributes:
    base: the quantizer interpolated; its ``bits`` field is ignored.
    min_bits, max_bits: the clamp of ``lambda`` (0 means the operand may be zeroed).
    init_bits: initial ``lambda`` (FracBits: target + 0.5).
    channels: one ``lambda`` per output feature of the op (the ``N`` of the weight view
      ``(*contracting, N)``; "kernel-wise", weights only).
  """

  base: Quantizer
  init_bits: float
  min_bits: int = 2
  max_bits: int = 8
  channels: bool = False

  def __post_init__(self):
    if not (isinstance(self.min_bits, int) and isinstance(self.max_bits, int)
            and self.min_bits < self.max_bits):
      raise ValueError(
          f"FracBits: min_bits={self.min_bits!r}, max_bits={self.max_bits!r}; use integers with "
          "min_bits < max_bits"
      )
    check_levels("FracBits", self.base, self.min_bits, self.max_bits)
    if not self.min_bits <= self.init_bits <= self.max_bits:
      raise ValueError(
          f"FracBits: init_bits={self.init_bits!r} is outside [{self.min_bits}, {self.max_bits}]"
      )

  def clamp(self, lam: Array) -> Array:
    return jnp.clip(lam, self.min_bits, self.max_bits)

  def init(self, x: Array) -> tuple[State, State]:
    params, stats = self.base.init(x)
    if LAMBDA in params:
      raise ValueError(f"FracBits: the base quantizer already has a parameter named {LAMBDA!r}")
    shape = (x.shape[-1],) if self.channels else ()
    return {**params, LAMBDA: jnp.full(shape, self.init_bits, jnp.float32)}, stats

  def update(self, x: Array, params: State, stats: State) -> State:
    return self.base.update(x, _base(params), stats)

  def fake(self, x: Array, params: State, stats: State) -> Array:
    bits = self.clamp(params[LAMBDA])
    return mix(self.base, x, _base(params), stats, bits, self.min_bits, self.max_bits)


  def export(self, x: Array, params: State, stats: State):
    """Refused: fractional (or per-channel) bit-widths have no integer form."""
    what = "kernel-wise FracBits (one bit-width per output channel)" if self.channels else "FracBits"
    raise ValueError(
        f"{what} has no integer export: its bit-widths are fractional search variables. Harden "
        "the search (compressjax.mixed.fracbits.harden), build the fixed-bit model from the "
        "allocation (report.rules_from_json), fine-tune and export that model")


def _base(params: State) -> State:
  return {k: v for k, v in params.items() if k != LAMBDA}


def fracbits(
    model: nn.Module,
    x: Array,
    *,
    target_bits: float = 3.0,
    min_bits: int = 2,
    max_bits: int = 8,
    kernel_wise: bool = False,
    method: Method = DEFAULT_METHOD,
    edge_bits: int = 8,
) -> nn.Module:
  """``model`` with FracBits weight and activation bit-widths at every site but the edges.

  Args:
    model: an unmodified float Linen or NNX model; ``x`` an example input (finds the sites;
      an NNX model's transform state is created on it, from the model's weights).
    target_bits: the bit-width the budget corresponds to; lambdas start at ``target + 0.5``.
    min_bits, max_bits: the allowed range of every searchable bit-width.
    kernel_wise: one weight bit-width per output channel instead of per layer.
    method: the quantizers interpolated (see ``adabits``; default ``"sat_centered"``).
    edge_bits: fixed bits of the first site's weights and the last site's weights and inputs.
  """
  if edge_bits < max(8, min_bits):
    raise ValueError(f"fracbits: edge_bits={edge_bits!r}; FracBits keeps the first and last "
                     "layer at >= 8 bits")
  w_base, a_base = quantizers(method, max_bits, max_bits)
  init = min(target_bits + 0.5, max_bits)
  common = dict(min_bits=min_bits, max_bits=max_bits, init_bits=init)
  weight = FracBits(base=w_base, channels=kernel_wise, **common)
  act = FracBits(base=a_base, **common)
  sites = discover(model, x)
  rules = edge_rules(sites, weight, act, method=method, edge_bits=edge_bits)
  stacked = [s.name for s in sites if s.has_weight and s.stack_lengths
             and first_match(rules, s)[1].weight is weight]
  if stacked:
    raise ValueError(
        f"fracbits: sites {stacked} are scanned stacks (nn.scan / nnx.scan): each layer would "
        "search its own bit-width, but one scanned op takes one fixed bit-width, so the "
        "hardened allocation could not be built or served; search a model whose layers are "
        "not stacked, or quantize the stack at fixed bits")
  return compress_on(model, rules, x)



class _Target:
  """A weight site by name, for rule matching (profile sites all read a parameter)."""

  has_weight = True
  weight_index = 1

  def __init__(self, name: str):
    self.name = name


def _rule(model: nn.Module, path: str):
  return model.compression.rule_for(_Target(path))


def _state_sites(tree: Any, prefix: tuple[str, ...] = ()) -> list[str]:
  """Site names that hold transform state in ``params["compressjax"]``."""
  if not isinstance(tree, dict):
    return []
  if tree and set(tree) <= {"weight", "input"}:
    return ["/".join(prefix)]
  out = []
  for k, v in tree.items():
    out += _state_sites(v, (*prefix, k))
  return out


def _nnx(model: Any) -> bool:
  from compressjax.core.nnx_compress import CompressedModule  # pylint: disable=g-import-not-at-top

  return isinstance(model, CompressedModule)


def _params(model: Any, params: Any) -> Any:
  """``params``; for a compressed NNX model given ``params=None``, its own site parameters in
  Linen's layout (``{"compressjax": {site: {"weight": ..., "input": ...}}}``)."""
  if params is None and _nnx(model):
    return {SITE_PARAMS: model.site_values()}
  return params


def _site_state(params: Any, path: str) -> dict:
  """``{"weight": ..., "input": ...}`` of site ``path`` (empty when it has no state)."""
  node = None if params is None else get_path(params.get(SITE_PARAMS, {}), path)
  return node if isinstance(node, dict) else {}


def _operand_bits(t: Any, state: dict | None, at_min: bool, path: str, operand: str) -> Any:
  """Bits of one operand: FracBits from its lambda (or its min), fixed quantizers their bits."""
  if t is None:
    return None
  if isinstance(t, FracBits):
    if at_min:
      return t.min_bits
    if state is None or LAMBDA not in state:
      raise ValueError(f"site {path!r}: no FracBits lambda for its {operand} in the params "
                       f"(params['{SITE_PARAMS}'][...]['{operand}']['{LAMBDA}']); initialise the "
                       "search model (fracbits.init_from_float or init_from)")
    return t.clamp(state[LAMBDA])
  if isinstance(t, ChannelBits):
    return np.asarray(t.bits, np.float32)
  if isinstance(t, Switchable):
    return t.active
  if isinstance(getattr(t, "bits", None), int):
    return t.bits
  raise TypeError(f"cannot tell the bit-width of transform {t!r}; use quantizers, Switchable, "
                  "FracBits or ChannelBits")


def site_bits(model: nn.Module, params: Any, profile: Profile, *, at_min: bool = False) -> tuple[dict, dict]:
  """Per-site ``(w_bits, a_bits)`` of a compressed model (``None``: float operand), by site name.

  FracBits operands give their clamped lambdas (jnp, differentiable), or their ``min_bits``
  with ``at_min``. Raises ValueError if a site with state in ``params`` has no entry in
  ``profile``. A compressed NNX model reads its own parameters (``params=None``; inside
  ``nnx.grad`` the costs differentiate in them).
  """
  spec = getattr(model, "compression", None)
  if spec is None:
    raise TypeError(f"{type(model).__name__} is not a compressed model (use fracbits() first)")
  params = _params(model, params)
  if params is not None:
    check_profile(profile, _state_sites(params.get(SITE_PARAMS, {})))
  w_bits, a_bits = {}, {}
  for path in profile.paths:
    rule = _rule(model, path)
    state = _site_state(params, path)
    w_bits[path] = _operand_bits(rule and rule.weight, state.get("weight"), at_min, path, "weight")
    a_bits[path] = _operand_bits(rule and rule.act, state.get("input"), at_min, path, "input")
  return w_bits, a_bits


def search_cost(model: nn.Module, params: Any, profile: Profile, budget: Budget) -> Any:
  """The budget's cost of the model's current (fractional) bits; differentiable in params."""
  return budget.cost(profile, *site_bits(model, params, profile))


def check_budget(model: nn.Module, params: Any, profile: Profile, budget: Budget) -> None:
  """ValueError if the budget is below what the allowed bits can reach."""
  min_cost = budget.cost(profile, *site_bits(model, params, profile, at_min=True))
  budget.check_reachable(min_cost, "every searchable bit-width at its min_bits")


def clamp_lambdas(model: nn.Module, params: Any = None) -> Any:
  """``params`` with every FracBits lambda projected onto its ``[min_bits, max_bits]``.

  Run after each optimizer step: the forward pass clamps too, but a lambda left outside the
  range would get no gradient back into it. A compressed NNX model (``params=None``) is clamped
  in place and returned.
  """
  if params is None and _nnx(model):
    model.set_site_values(clamp_lambdas(model, _params(model, None))[SITE_PARAMS])
    return model

  def project(path, leaf):
    keys = [key_name(k) for k in path]
    if len(keys) < 4 or keys[0] != SITE_PARAMS or keys[-1] != LAMBDA:
      return leaf
    site, operand = "/".join(keys[1:-2]), keys[-2]
    rule = _rule(model, site)
    t = None if rule is None else rule.weight if operand == "weight" else rule.act
    return t.clamp(leaf) if isinstance(t, FracBits) else leaf

  return jax.tree_util.tree_map_with_path(project, params)


@dataclasses.dataclass(frozen=True)
class _Unit:
  """One searchable operand: its site, which operand, its clamp and its current lambda."""

  path: str
  operand: str  # "w" or "a"
  lo: int
  hi: int
  lam: np.ndarray


def _units(model: nn.Module, params: Any, profile: Profile) -> list[_Unit]:
  params = _params(model, params)
  out = []
  for path in profile.paths:
    rule = _rule(model, path)
    state = _site_state(params, path)
    for operand, t, key in (("w", rule and rule.weight, "weight"), ("a", rule and rule.act, "input")):
      if isinstance(t, FracBits):
        lam = np.asarray(t.clamp(state[key][LAMBDA]), np.float64)
        out.append(_Unit(path, operand, t.min_bits, t.max_bits, lam))
  return out


def harden(
    model: nn.Module,
    params: Any,
    profile: Profile,
    budget: Budget,
    *,
    tol: float = 0.01,
    steps: int = 10,
    max_steps: int = 40,
) -> BitAllocation:
  """Integer bits ``round(lambda + offset)`` whose cost is within ``tol`` of the budget.

  ``offset`` is bisected in ``[-1, 0]`` (widened below -1 if even -1 is over budget) for
  ``steps`` steps, continued up to ``max_steps`` while the cost is not yet within ``tol``.
  The cost at or under the target is preferred: if the under side of the last bisection
  interval is not within ``tol`` (coarse bits: one layer's step is larger than 1%), a greedy
  fill adds one bit at a time, to the operands whose lambdas were closest to rounding up,
  while the cost stays under the target; if that is still not within ``tol``, the over side
  is taken when it is closer.
  ``meta`` records the offset, the steps, the cost and its relative error. A compressed NNX
  model reads its own parameters (``params=None``).
  """
  check_budget(model, params, profile, budget)
  w_fixed, a_fixed = site_bits(model, params, profile)
  units = _units(model, params, profile)
  if not units:
    raise ValueError("harden: the model has no FracBits operands (build it with fracbits())")

  def cost(ints: list[np.ndarray]) -> float:
    w, a = dict(w_fixed), dict(a_fixed)
    for u, b in zip(units, ints):
      (w if u.operand == "w" else a)[u.path] = b.astype(np.float32) if b.ndim else float(b)
    return float(budget.cost(profile, w, a))

  def rounded(offset: float) -> list[np.ndarray]:
    return [np.array(np.clip(np.round(u.lam + offset), u.lo, u.hi)) for u in units]

  within = lambda c: abs(budget.relative_error(c)) <= tol
  lo, hi, n = -1.0, 0.0, 0
  while cost(rounded(lo)) > budget.target:
    hi, lo = lo, lo - 1.0
  if cost(rounded(hi)) <= budget.target:
    lo = hi
  else:
    while n < max_steps and (n < steps or not within(cost(rounded(lo)))):
      mid = (lo + hi) / 2
      lo, hi = (mid, hi) if cost(rounded(mid)) <= budget.target else (lo, mid)
      n += 1
  offset, ints, filled = lo, rounded(lo), 0
  if not within(cost(ints)):
    ints, filled = _fill(units, ints, offset, cost, budget.target)
  over = rounded(hi)
  if not within(cost(ints)) and abs(budget.relative_error(cost(over))) < abs(budget.relative_error(cost(ints))):
    offset, ints, filled = hi, over, 0
  final = cost(ints)
  w, a = dict(w_fixed), dict(a_fixed)
  for u, b in zip(units, ints):
    (w if u.operand == "w" else a)[u.path] = b.astype(int).tolist() if b.ndim else int(b)
  return BitAllocation.create(
      w, a, method="fracbits",
      meta={"budget_kind": budget.kind, "target": budget.target, "cost": final,
            "relative_error": budget.relative_error(final), "offset": offset,
            "bisection_steps": n, "greedy_fill_bits": filled},
  )


def _fill(units, ints, offset, cost, target):
  """Adds bits one at a time while the cost stays <= target: in passes over the operands
  (largest rounding residual ``lambda + offset - bits`` first), until a pass adds none."""
  ints = [b.copy() for b in ints]
  filled, added = 0, True
  while added:
    added = False
    order = sorted(((float(u.lam.flat[j] + offset - b.flat[j]), i, j)
                    for i, (u, b) in enumerate(zip(units, ints)) for j in range(b.size)),
                   reverse=True)
    for _, i, j in order:
      if ints[i].flat[j] >= units[i].hi:
        continue
      trial = [b.copy() for b in ints]
      trial[i].flat[j] += 1
      if cost(trial) <= target:
        ints, filled, added = trial, filled + 1, True
  return ints, filled
