"""Low-bit matmul kernels (Pallas: Triton on GPU, Mosaic on TPU, interpret mode) and a dispatcher.

``matmul(x, w)`` is the entry point; it picks a backend from measured tables (``tables``). The
per-kernel functions and their ``jnp`` references are exported for tests, benchmarks and callers
who want to pin a path.
"""

from compressjax.kernels._pallas import BlockConfig
from compressjax.kernels.dispatch import BACKENDS, Choice, choose_backend, matmul
from compressjax.kernels.tables import Entry, Table, find_table, load_table, save_table
from compressjax.kernels.tiles import default_config
from compressjax.kernels.w8a8 import quantize_rows, w8a8_matmul, w8a8_reference
from compressjax.kernels.weight_only import weight_only_matmul, weight_only_reference
from compressjax.kernels.xla import w8a8_xla, weight_only_xla

__all__ = [
    "BACKENDS",
    "BlockConfig",
    "Choice",
    "Entry",
    "Table",
    "choose_backend",
    "default_config",
    "find_table",
    "load_table",
    "matmul",
    "quantize_rows",
    "save_table",
    "w8a8_matmul",
    "w8a8_reference",
    "w8a8_xla",
    "weight_only_matmul",
    "weight_only_reference",
    "weight_only_xla",
]
