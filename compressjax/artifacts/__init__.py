"""Serving artifacts of an exported model: StableHLO (jax.export) and ONNX.

``cj.export`` gives a serving model; these write it to files that run without compressjax:
:func:`save_stablehlo` / :func:`load_stablehlo` (JAX and NumPy only), :func:`save_onnx`
(onnxruntime, integer ops on the int8 sites) and :func:`write_artifacts` (both, with sizes and
onnxruntime's agreement with JAX).
"""

from compressjax.artifacts.onnx_graph import save_onnx, to_onnx
from compressjax.artifacts.stablehlo import load_stablehlo, save_stablehlo
from compressjax.artifacts.write import write_artifacts

__all__ = ["load_stablehlo", "save_onnx", "save_stablehlo", "to_onnx", "write_artifacts"]
