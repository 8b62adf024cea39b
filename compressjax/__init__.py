"""compressjax: make JAX/Flax models smaller and faster.

Subpackages: ``quant`` (quantizers, QArray), ``core`` (rules, compress),
``prune``, ``distill``, ``kernels``, ``models``, ``data``, ``train``.
"""

__version__ = "0.1.0"
