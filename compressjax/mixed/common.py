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
  initialised from a percentile of the float activations it clips, so that low-bit fine-tuning
  does not start from alpha = 10 (PACT's default) on inputs of magnitude ~1.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from compressjax.core.compress import INPUT_PREFIX, init_from, uncompressed
from compressjax.core.matching import path_str
from compressjax.core.rule import Rule, with_edges
from compressjax.core.sites import is_site
from compressjax.quant.recipes import recipe

Array = jax.Array
Method = str | Callable[[int, int], tuple[Any, Any]]
DEFAULT_METHOD = "sat_centered"

ALPHA_NAME = re.compile(rf"^{INPUT_PREFIX}(.*_)?alpha(_b\d+)?$")
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


def site_inputs(model: nn.Module, variables: dict, x: Array, **kwargs: Any) -> dict[str, Array]:
  """The input of every site of a float ``model`` on ``x`` (first call per site), by path."""
  found: dict[str, Array] = {}

  def record(next_fun, args, call_kwargs, context):
    if is_site(context.module, context.method_name):
      found.setdefault(path_str(context.module.path), args[0])
    return next_fun(*args, **call_kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, **kwargs)
  return found


def start_from_float(
    model: nn.Module, float_variables: dict, x: Array, *, alpha_percentile: float | None = 99.0
) -> dict:
  """Variables of compressed ``model`` starting from ``float_variables`` of its float model.

  Every per-bit switch ``<name>_b<bits>`` of a BatchNorm (AdaBits) starts as a copy of the
  float ``<name>``; transform state is initialised on ``x`` (eval mode) from these values; and
  every PACT clip level (``input_alpha``, ``input_alpha_b<bits>``) of a site is set to the
  ``alpha_percentile`` percentile of that site's float input on ``x`` (None: keep PACT's init).
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
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


def _set_alphas(params: dict, levels: dict[str, float], prefix: tuple[str, ...] = ()) -> dict:
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out[key] = _set_alphas(value, levels, (*prefix, key))
    elif ALPHA_NAME.match(key) and path_str(prefix) in levels:
      out[key] = jnp.full_like(value, max(levels[path_str(prefix)], 1e-3))
    else:
      out[key] = value
  return out


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
