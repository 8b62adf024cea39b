"""Export: a trained fake-quant model -> integer QArray weights and a serving model.

``export(model, variables)`` replaces every quantized site's float kernel (and the weight
quantizer's own state, now folded into scales) with the :class:`QArray` that the weight
quantizer writes, and returns the same model in serving mode: its Dense layers multiply
through :func:`compressjax.kernels.dispatch.matmul`, other layers through the dequantized
weight, and activation quantizers run as in training. Outputs equal the fake-quant model's up
to float rounding, because ``QArray.dequantize() == quantizer.fake(kernel)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from compressjax.core.compress import STATS, WEIGHT_PREFIX, is_compressed, with_compression
from compressjax.core.matching import path_str
from compressjax.qarray import QArray


def export(model: nn.Module, variables: dict, *, backend: str | None = None):
  """Returns ``(serving_model, serving_variables)`` for a compressed ``model``.

  Args:
    model: a model built by :func:`compressjax.core.compress`.
    variables: its trained variables (``params``, ``quant_stats``, ``batch_stats``, ...).
    backend: kernel dispatcher backend for serving (None: automatic by platform and shape).
  """
  if not is_compressed(model):
    raise TypeError(
        f"export needs a compressed model (compressjax.core.compress), got {type(model).__name__}"
    )
  spec = model.compression
  params = _to_dict(variables["params"])
  stats = _to_dict(variables.get(STATS, {}))
  for path, site in _kernel_owners(params):
    rule = spec.rule_for(path_str(path))
    if rule is None or rule.weight is None:
      continue
    site_stats = _get(stats, path)
    qarray = rule.weight.export(
        site["kernel"], _strip(site, WEIGHT_PREFIX), _strip(site_stats, WEIGHT_PREFIX)
    )
    for name in [k for k in site if k.startswith(WEIGHT_PREFIX)]:
      del site[name]
    for name in [k for k in site_stats if k.startswith(WEIGHT_PREFIX)]:
      del site_stats[name]
    site["kernel"] = qarray
  serving = {**variables, "params": params}
  if STATS in variables:
    serving[STATS] = stats
  return with_compression(model, serve=True, backend=backend), serving


@dataclasses.dataclass(frozen=True)
class SizeReport:
  """Bytes of a variables tree: total, by kind, and per top-level parameter path."""

  total_bytes: int
  qarray_bytes: int
  float_bytes: int
  per_leaf: dict[str, int]


def size_report(variables: dict, collections: tuple[str, ...] = ("params",)) -> SizeReport:
  """Storage size of ``variables`` (QArrays count their packed codes and scales)."""
  per_leaf: dict[str, int] = {}
  qbytes = fbytes = 0
  for col in collections:
    leaves = jax.tree_util.tree_flatten_with_path(
        variables.get(col, {}), is_leaf=lambda x: isinstance(x, QArray)
    )[0]
    for path, leaf in leaves:
      key = col + "/" + "/".join(str(getattr(p, "key", p)) for p in path)
      if isinstance(leaf, QArray):
        n = leaf.nbytes
        qbytes += n
      else:
        n = int(np.size(leaf)) * np.dtype(leaf.dtype).itemsize
        fbytes += n
      per_leaf[key] = n
  return SizeReport(qbytes + fbytes, qbytes, fbytes, per_leaf)


def _to_dict(tree: Any) -> Any:
  """A mutable nested-dict copy of a (possibly frozen) variables collection."""
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree


def _kernel_owners(params: dict, prefix: tuple[str, ...] = ()):
  """(path, dict) for every dict in the tree that holds a ``kernel`` leaf."""
  if "kernel" in params and not isinstance(params["kernel"], dict):
    yield prefix, params
  for k, v in params.items():
    if isinstance(v, dict):
      yield from _kernel_owners(v, (*prefix, k))


def _get(tree: dict, path: tuple[str, ...]) -> dict:
  for k in path:
    tree = tree.get(k, {})
  return tree


def _strip(d: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
