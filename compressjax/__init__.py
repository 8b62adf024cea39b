"""compressjax: make JAX/Flax models smaller and faster.

The top level re-exports the everyday API (rules, ``compress``, ``export``, ``QArray``, the
quantizers under ``quant``). Every other subpackage is an attribute imported on first use
(PEP 562), so ``import compressjax`` stays light: ``cj.prune``, ``cj.distill``, ``cj.mixed``,
``cj.cost``, ``cj.kernels``, ``cj.models``, ``cj.train`` (orbax), ``cj.data``
(tensorflow-datasets). Layers, lowest first (``tests/test_layering.py`` checks them): qarray and
kernels, core, methods (quant, prune, distill, mixed, cost), export, train, applications
(data, models, config; then runs, config-driven training; then cli, pipeline).
"""

import importlib
from typing import Any

from compressjax import core, quant
from compressjax.core import Rule, calibrate, chain, compress, discover, init_from, param_labels
from compressjax.export import export, size_report
from compressjax.qarray import QArray

__version__ = "0.1.0"

_LAZY = ("artifacts", "config", "cost", "data", "distill", "kernels", "mixed", "models",
         "pipeline", "prune", "runs", "train")

__all__ = [
    "QArray",
    "Rule",
    "calibrate",
    "chain",
    "compress",
    "core",
    "discover",
    "export",
    "init_from",
    "param_labels",
    "quant",
    "size_report",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return importlib.import_module(f"compressjax.{name}")
  raise AttributeError(f"module 'compressjax' has no attribute {name!r}; it has {sorted(__all__)}")


def __dir__() -> list[str]:
  return sorted({*globals(), *_LAZY})
