"""compressjax: make JAX/Flax models smaller and faster.

The top level re-exports the everyday API; the subpackages hold the rest: ``core`` (rules,
compress, chain, calibrate), ``quant`` (quantizers, QArray, recipes), ``prune``, ``distill``,
``kernels``, ``models``, ``cost``, ``data`` and ``train`` (imported on demand: they pull in
tensorflow-datasets and orbax).
"""

from compressjax import core, kernels, quant
from compressjax.core import Rule, calibrate, chain, compress, discover, init_from, param_labels
from compressjax.export import export, size_report
from compressjax.quant import QArray

__version__ = "0.1.0"

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
    "kernels",
    "param_labels",
    "quant",
    "size_report",
]
