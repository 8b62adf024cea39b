"""Shared by AdaBits, FracBits and HAWQ: quantizer recipes, edge rules, starting from float.

* :func:`quantizers`: the (weight, activation) quantizers of a method at given bits: a
  :mod:`compressjax.quant.recipes` name (default ``"sat_centered"``: the "modified" grid's
  levels shift a Dense layer's mean so far that ReLUs after it can all die, see
  experiments/results/quantization.md), or a callable ``(w_bits, a_bits) -> (weight, act)``.
* :func:`edge_rules`: the rule layout every mixed-precision method here uses (as in
  :func:`compressjax.quant.recipes.recipe_rules`): the first site keeps a float input and
  ``edge_bits`` weights, the last site ``edge_bits`` weights and inputs, and every other site
  gets the method's own (switchable, fractional, ...) weight and activation transforms.
* :func:`start_from_float`: variables of a compressed model built from a float model's, with
  BatchNorm copied into every per-bit switch (``<name>_b<bits>``) and every PACT clip level
  (an ``alpha`` in a site's input state, ``params["compressjax"][<site>]["input"]``)
  initialised from a percentile of the float activations it clips, so that low-bit fine-tuning
  does not start from alpha = 10 (PACT's default) on inputs of magnitude ~1.
* :func:`site_inputs`: the activation operand of every weight site of a float model, by site
  name.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compressjax.core.record import RecordInput
from compressjax.core.matching import UnusedRuleWarning
from compressjax.core.compress import (SITE_PARAMS, STATS, compress, init_from, refuse_nnx,
                                       uncompressed)
from compressjax.core.rule import Rule, with_edges
from compressjax.core.tree_paths import get_path
from compressjax.quant.recipes import recipe

Array = jax.Array
Method = str | Callable[[int, int], tuple[Any, Any]]
DEFAULT_METHOD = "sat_centered"

ALPHA = "alpha"
_SWITCH = re.compile(r"^(.*)_b(\d+)$")


def quantizers(method: Method, w_bits: int, a_bits: int) -> tuple[Any, Any]:
  """``(weight, activation)`` quantizers of ``method`` (see the module docstring)."""
  if callable(method):
    return method(w_bits, a_bits)
  return recipe(method, w_bits, a_bits)


def edge_rules(sites: Sequence[Any], weight: Any, act: Any, *, method: Method, edge_bits: int) -> list[Rule]:
  """``weight``/``act`` at every site but the first and last, which get ``method`` at ``edge_bits``."""
  edge_weight, edge_act = quantizers(method, edge_bits, edge_bits)
  return with_edges(
      [Rule(pattern=".", weight=weight, act=act)],
      sites,
      first=Rule(pattern="", weight=edge_weight),
      last=Rule(pattern="", weight=edge_weight, act=edge_act),
  )


def compress_on(model: Any, rules: Sequence[Rule], x: Array, **kwargs: Any) -> Any:
  """``compress(model, rules)``; an NNX model also takes ``x``, on which its state is created."""
  if isinstance(model, nn.Module):
    return compress(model, rules, **kwargs)
  return compress(model, rules, x, **kwargs)


def site_inputs(model: nn.Module, variables: dict, x: Array, **kwargs: Any) -> dict[str, Array]:
  """The activation operand of every weight site of a float ``model`` on ``x``, by site name
  (as the op sees it; stacked along the leading axes for sites in ``nn.scan`` stacks)."""
  recorder = compress(uncompressed(model), [Rule(pattern=".", act=RecordInput())])
  user = {k: v for k, v in variables.items() if k != STATS}
  user["params"] = {k: v for k, v in variables["params"].items() if k != SITE_PARAMS}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    stats = init_from(recorder, user, x, **kwargs).get(STATS, {})
  found: dict[str, Array] = {}

  def collect(tree, prefix):
    for k, v in tree.items():
      if k == "input" and isinstance(v, dict) and set(v) == {"x"}:
        found["/".join(prefix)] = v["x"]
      elif isinstance(v, dict):
        collect(v, (*prefix, k))

  collect(stats, ())
  return found


def init_shapes(model: nn.Module, x: Array) -> dict:
  """Shapes of the variables of compressed ``model`` (eval mode), including those that its
  interceptors create (AdaBits' ``<name>_b<bits>`` BatchNorm switches).

  Works around the core's ``init``, which keeps only the variables of the plain model's init
  (variables created by ``Compression.interceptors`` are dropped).
  """
  plain = uncompressed(model)
  spec = getattr(model, "compression", None)
  interceptors = () if spec is None else spec.interceptors

  def init(x):
    with contextlib.ExitStack() as stack:
      for interceptor in interceptors:
        stack.enter_context(nn.intercept_methods(interceptor))
      return plain.init(jax.random.key(0), x, train=False)

  return jax.eval_shape(init, x)


def start_from_float(
    model: nn.Module, float_variables: dict, x: Array, *, alpha_percentile: float | None = 99.0
) -> dict:
  """Variables of compressed ``model`` starting from ``float_variables`` of its float model.

  Every per-bit switch ``<name>_b<bits>`` of a BatchNorm (AdaBits) starts as a copy of the
  float ``<name>``; transform state is initialised on ``x`` (eval mode) from these values; and
  every PACT clip level of a site (any ``alpha`` in its input transform's state, switches and
  chains included) is set to the ``alpha_percentile`` percentile of that site's float input on
  ``x`` (None: keep PACT's init).
  """
  refuse_nnx(model, "start_from_float")
  shapes = init_shapes(model, x)
  start = {
      col: _copy_float_into_switches(shapes[col], float_variables[col])
      for col in float_variables
      if col in shapes
  }
  variables = jax.jit(lambda v, x: init_from(model, v, x, train=False))(start, x)
  if alpha_percentile is None:
    return variables
  float_model = uncompressed(model)
  inputs = jax.jit(lambda v, x: site_inputs(float_model, v, x, train=False))(float_variables, x)
  levels = {p: float(np.percentile(np.asarray(v), alpha_percentile)) for p, v in inputs.items()}
  return {**variables, "params": _set_alphas(variables["params"], levels)}


def _copy_float_into_switches(shapes: Any, values: Any) -> Any:
  """``values`` reshaped like ``shapes``: a missing ``<name>_b<bits>`` leaf takes ``values[name]``."""
  if not isinstance(shapes, dict):
    return values
  out = {}
  for key, shape in shapes.items():
    if key in values:
      out[key] = _copy_float_into_switches(shape, values[key])
      continue
    match = _SWITCH.match(key)
    if match and match.group(1) in values and not isinstance(values[match.group(1)], dict):
      out[key] = jnp.asarray(values[match.group(1)])
  return out


def _set_alphas(params: dict, levels: dict[str, float]) -> dict:
  """``params`` with every ``alpha`` leaf of a site's input state set to that site's level."""
  site_params = params.get(SITE_PARAMS)
  if not site_params:
    return params
  site_params = jax.tree.map(lambda v: v, site_params)  # fresh dicts
  for name, level in levels.items():
    node = get_path(site_params, name)
    if node is None or "input" not in node:
      continue
    node["input"] = _fill_alpha(node["input"], max(level, 1e-3))
  return {**params, SITE_PARAMS: site_params}


def _fill_alpha(state: Any, level: float) -> Any:
  if isinstance(state, dict):
    return {k: jnp.full_like(v, level) if k == ALPHA and not isinstance(v, (dict, tuple, list))
            else _fill_alpha(v, level) for k, v in state.items()}
  if isinstance(state, (tuple, list)):
    return type(state)(_fill_alpha(v, level) for v in state)
  return state


def node_at(tree: dict, path: str) -> dict:
  """The sub-dict of a variables tree at a '/'-joined module path."""
  for part in path.split("/"):
    tree = tree[part]
  return tree


def transfer(src: Any, dst: Any) -> Any:
  """``dst`` with every leaf that ``src`` has at the same path and shape taken from ``src``.

  Carries weights, BatchNorm and clip levels from a search model (FracBits) to the integer
  model built from its allocation.
  """
  if isinstance(dst, dict):
    src = src if isinstance(src, dict) else {}
    return {k: transfer(src.get(k), v) for k, v in dst.items()}
  if src is not None and jnp.shape(src) == jnp.shape(dst):
    return src
  return dst
