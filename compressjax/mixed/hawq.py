"""HAWQ-style mixed precision: bits by Hessian-trace sensitivity under a budget.

Sensitivity of a layer's operand (its kernel, or its input) is the average Hessian trace of the
loss with respect to it, ``Tr(H) / n``, estimated by Hutchinson's method: ``E_v[v^T H v]`` with
Rademacher ``v`` and Hessian-vector products ``jax.jvp`` of ``jax.grad`` (no Hessian is formed).
Input Hessians come from a zero perturbation ``delta`` added to each site's input (a transform)
and differentiated like a weight. One HVP over all operands at once estimates every block's
trace, since ``E[v_i v_j^T] = 0`` across blocks.

The expected loss increase of quantizing an operand at ``b`` bits is
``Omega(b) = Tr(H)/n * ||Q_b(x) - x||^2`` (weights after a least-squares rescale, since the
recipes' weight grids are scale-free behind BatchNorm). Allocation is greedy and ILP-free:
every searchable operand starts at ``max_bits``; while over budget, drop one bit where
``dOmega / dCost`` is smallest; then add bits back, largest ``dOmega / dCost`` first, while the
cost stays under the budget. The layout (edges, searchable operands) is FracBits'.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax.core.compress import SITE_PARAMS, compress, init_from, weight_view
from compressjax.core.matching import first_match
from compressjax.core.rule import Rule
from compressjax.core.sites import discover
from compressjax.core.tree_paths import get_path, set_path
from compressjax.cost import Profile
from compressjax.mixed.budget import Budget, check_profile
from compressjax.mixed.common import DEFAULT_METHOD, Method, edge_rules, quantizers, site_inputs
from compressjax.mixed.report import BitAllocation

Array = jax.Array

__all__ = ["Budget", "hawq_allocation", "hutchinson_trace", "site_traces"]


def hutchinson_trace(f: Callable[..., Array], params: Any, key: Array, num_samples: int = 64,
                     args: tuple = (), chunk: int = 16) -> Any:
  """Per-leaf Hessian trace estimates of scalar ``f(params, *args)`` w.r.t. ``params``.

  Returns a pytree of scalars like ``params``: ``mean_s <v_s, H v_s>`` restricted to each leaf,
  ``v_s`` Rademacher over the whole tree. Pass data through ``args`` rather than closing over
  it: closed-over arrays become constants that XLA tries to fold (slow compiles). ``chunk``
  samples are computed at once (memory: ``chunk`` copies of the tangents and activations).
  """
  if num_samples < 1:
    raise ValueError(f"hutchinson_trace: num_samples={num_samples!r}; use at least 1")
  grad_f = jax.grad(f)
  leaves, treedef = jax.tree.flatten(params)

  def rademacher(k):
    keys = jax.random.split(k, len(leaves))
    return treedef.unflatten([jax.random.rademacher(kk, jnp.shape(l), jnp.result_type(l))
                              for kk, l in zip(keys, leaves)])

  def v_hv(p, a, v):
    hv = jax.jvp(lambda q: grad_f(q, *a), (p,), (v,))[1]
    return jax.tree.map(lambda x, y: jnp.sum(x * y), v, hv)

  # Chunks of HVPs vmapped over their random vectors, one jitted call per chunk (on CPU much
  # faster than lax.map over samples); the vectors come from a separate small program, which
  # keeps the RNG out of the HVP's compilation.
  draw = jax.jit(jax.vmap(rademacher))
  run = jax.jit(jax.vmap(v_hv, in_axes=(None, None, 0)))
  keys = jax.random.split(key, num_samples)
  chunks = [run(params, tuple(args), draw(keys[i:i + chunk]))
            for i in range(0, num_samples, chunk)]
  return jax.tree.map(lambda *c: jnp.concatenate(c).mean(), *chunks)


@dataclasses.dataclass(frozen=True)
class _Perturb:
  """Adds a zero-initialised ``delta`` to a site's input, so the input has a Hessian."""

  def init(self, x: Array):
    return {"delta": jnp.zeros_like(x)}, {}

  def update(self, x, params, stats):
    return stats

  def fake(self, x, params, stats):
    return x + params["delta"]


def cross_entropy(logits: Array, labels: Array) -> Array:
  """The default loss of :func:`site_traces`: mean softmax cross-entropy, integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _param_of(sites: dict, name: str) -> str:
  site = sites.get(name)
  if site is None or not site.has_weight:
    raise ValueError(f"site_traces: {name!r} is not a weight site of the model; weight sites "
                     f"are: {', '.join(n for n, s in sites.items() if s.has_weight)}")
  return site.param


def site_traces(
    model: nn.Module,
    variables: dict,
    x: Array,
    y: Array,
    key: Array,
    *,
    weights: list[str],
    inputs: list[str],
    num_samples: int = 32,
    loss_fn: Callable[[Array, Array], Array] = cross_entropy,
) -> dict[str, dict[str, float]]:
  """Average Hessian traces ``Tr(H)/n`` of the eval-mode loss on ``(x, y)`` w.r.t. the weight
  parameter of each site in ``weights`` and the activation operand of each site in ``inputs``
  (site names, ``"conv1/kernel"``): ``{site name: {"w": .., "a": ..}}``.
  """
  sites = {s.name: s for s in discover(model, x, train=False)}
  params_of = {n: _param_of(sites, n) for n in [*weights, *inputs]}
  perturbed = compress(model, [Rule(pattern=f"^{re.escape(p)}$", act=_Perturb()) for p in inputs])
  full = jax.jit(lambda v, x: init_from(perturbed, v, x, train=False))(variables, x)
  where = {"w": {n: ("", params_of[n]) for n in weights},
           "a": {n: (SITE_PARAMS, f"{n}/input/delta") for n in inputs}}
  at = lambda params, root, path: get_path(params[root] if root else params, path)
  target = {o: {n: at(full["params"], *w) for n, w in ws.items()} for o, ws in where.items()}

  def loss(t, variables, x, y):
    params = dict(variables["params"])
    for operand, values in t.items():
      for n, value in values.items():
        root, path = where[operand][n]
        if root:
          params[root] = dict(params[root])
          set_path(params[root], path, value)
        else:
          set_path(params, path, value)
    logits = perturbed.apply({**variables, "params": params}, x, train=False)
    return loss_fn(logits, y)

  traces = hutchinson_trace(loss, target, key, num_samples, args=(full, x, y))
  out: dict[str, dict[str, float]] = {}
  for operand in ("w", "a"):
    for p, tr in traces[operand].items():
      out.setdefault(p, {})[operand] = float(tr) / target[operand][p].size
  return out


def _weight_noise(q, w: Array) -> float:
  """``min_s ||w - s Q(w)||^2``: quantization noise of a scale-free weight grid."""
  p, s = q.init(w)
  qw = q.fake(w, p, s)
  scale = jnp.vdot(w, qw) / jnp.maximum(jnp.vdot(qw, qw), 1e-12)
  return float(jnp.sum((w - scale * qw) ** 2))


def _weight_operand(site, params: dict) -> Array:
  """The site's weight as its quantizer sees it, ``(*contracting, N)`` (stacked sites: the
  parameter as stored)."""
  w = get_path(params, site.param)
  if site.stack or tuple(w.shape) != tuple(site.shapes[site.weight_index]):
    return w
  return weight_view(site)[0](w)


def _act_noise(q, a: Array, alpha: float) -> float:
  p, s = q.init(a)
  p = {**p, "alpha": jnp.asarray(alpha, jnp.float32)} if "alpha" in p else p
  return float(jnp.sum((a - q.fake(a, p, s)) ** 2))


_SEARCH = "search"  # placeholder transform marking a searchable operand in the edge layout


def hawq_allocation(
    model: nn.Module,
    variables: dict,
    x: Array,
    y: Array,
    profile: Profile,
    budget: Budget,
    *,
    key: Array,
    method: Method = DEFAULT_METHOD,
    min_bits: int = 2,
    max_bits: int = 8,
    edge_bits: int = 8,
    num_samples: int = 32,
    alpha_percentile: float = 99.0,
    traces: dict[str, dict[str, float]] | None = None,
) -> BitAllocation:
  """Integer bits for a float ``model`` (``variables``) under ``budget``, by Hessian sensitivity.

  Searchable operands and fixed edges are as in :func:`compressjax.mixed.fracbits.fracbits`;
  ``(x, y)`` is the batch the Hessian traces and quantization noise are measured on; PACT clip
  levels for the activation noise are the ``alpha_percentile`` of each input. ``traces``:
  :func:`site_traces` already computed (e.g. ``meta["avg_hessian_trace"]`` of an allocation of
  the same model under another budget); they do not depend on the budget.
  """
  if not 0 < min_bits < max_bits:
    raise ValueError(f"hawq_allocation: min_bits={min_bits}, max_bits={max_bits}; use 0 < min < max")
  sites = [s for s in discover(model, x, train=False) if s.has_weight]
  check_profile(profile, [s.name for s in sites])
  fixed_w, fixed_a, units = _layout(sites, method, edge_bits)
  by_name = {s.name: s for s in sites}

  def assignment(bits: dict) -> tuple[dict, dict]:
    w, a = dict(fixed_w), dict(fixed_a)
    for (p, o), b in bits.items():
      (w if o == "w" else a)[p] = b
    return w, a

  cost = lambda bits: float(budget.cost(profile, *assignment(bits)))
  budget.check_reachable(cost({u: min_bits for u in units}), "every searchable operand at min_bits")
  if traces is None:
    traces = site_traces(model, variables, x, y, key, num_samples=num_samples,
                         weights=[p for p, o in units if o == "w"],
                         inputs=[p for p, o in units if o == "a"])
  acts = jax.jit(lambda v, x: site_inputs(model, v, x, train=False))(variables, x)
  omega = {}
  for p, o in units:
    sens = max(traces[p][o], 0.0)
    for b in range(min_bits, max_bits + 1):
      wq, aq = quantizers(method, b, b)
      if o == "w":
        noise = _weight_noise(wq, _weight_operand(by_name[p], variables["params"]))
      else:
        noise = _act_noise(aq, acts[p], float(np.percentile(np.asarray(acts[p]), alpha_percentile)))
      omega[(p, o, b)] = sens * noise
  bits = _greedy(units, omega, cost, budget.target, min_bits, max_bits)
  w, a = assignment(bits)
  final = cost(bits)
  ordered = [s.name for s in sites]
  return BitAllocation.create(
      {p: w[p] for p in ordered}, {p: a[p] for p in ordered}, method="hawq",
      meta={"budget_kind": budget.kind, "target": budget.target, "cost": final,
            "relative_error": budget.relative_error(final), "avg_hessian_trace": traces},
  )


def _layout(sites, method: Method, edge_bits: int) -> tuple[dict, dict, list[tuple[str, str]]]:
  """Fixed edge bits (w, a) and the searchable ``(path, "w" | "a")`` operands, as FracBits."""
  fixed_w, fixed_a, units = {}, {}, []
  layout = edge_rules(sites, _SEARCH, _SEARCH, method=method, edge_bits=edge_bits)
  for site in sites:
    rule = first_match(layout, site)[1]
    for operand, t, fixed in (("w", rule.weight, fixed_w), ("a", rule.act, fixed_a)):
      if t is _SEARCH:
        units.append((site.name, operand))
      else:
        fixed[site.name] = None if t is None else t.bits
  return fixed_w, fixed_a, units


def _greedy(units, omega, cost, target: float, min_bits: int, max_bits: int) -> dict:
  """From ``max_bits`` everywhere: drop the cheapest bit (dOmega / dCost) until under
  ``target``, then add back the most valuable bits that still fit."""
  bits = {u: max_bits for u in units}

  def move(u, d):
    trial = {**bits, u: bits[u] + d}
    gain = abs(omega[(*u, bits[u] + d)] - omega[(*u, bits[u])])
    return trial, gain / max(abs(cost(bits) - cost(trial)), 1e-12)

  while cost(bits) > target:
    bits = min((move(u, -1) for u in units if bits[u] > min_bits), key=lambda m: m[1])[0]
  while True:
    fits = [m for m in (move(u, +1) for u in units if bits[u] < max_bits) if cost(m[0]) <= target]
    if not fits:
      return bits
    bits = max(fits, key=lambda m: m[1])[0]
