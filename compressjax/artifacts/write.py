"""Both artifacts of a serving model in one directory, with their sizes and a cross-check."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from compressjax.artifacts.onnx_graph import save_onnx
from compressjax.artifacts.serving_fn import serving_function
from compressjax.artifacts.stablehlo import save_stablehlo


def write_artifacts(serving_model: Any, serving_vars: dict | None, example_input: Any,
                    out_dir: str) -> dict:
  """Writes ``out_dir/stablehlo/`` and ``out_dir/model.onnx``; returns sizes and agreement.

  The agreement runs ``example_input`` (an array: it is also the check's batch) through JAX and
  onnxruntime: ``onnx_max_abs_diff`` of the outputs and ``onnx_argmax_agreement`` (the fraction
  of rows whose last-axis argmax is equal). Sizes are in bytes; ``weights_bytes`` counts the
  serving variables' leaves (packed QArrays).
  """
  import onnxruntime  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  manifest = save_stablehlo(serving_model, serving_vars, example_input,
                            os.path.join(out_dir, "stablehlo"))
  onnx_path = os.path.join(out_dir, "model.onnx")
  onnx_bytes = save_onnx(serving_model, serving_vars, example_input, onnx_path)
  fn, leaves, _ = serving_function(serving_model, serving_vars)
  expected = np.asarray(jax.jit(fn)(leaves, example_input))
  session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
  (got,) = session.run(None, {"input": np.asarray(example_input)})
  return {
      "weights_bytes": sum(v.nbytes for v in leaves),
      "stablehlo_module_bytes": manifest["module_bytes"],
      "stablehlo_weights_bytes": manifest["weights_bytes"],
      "onnx_bytes": onnx_bytes,
      "onnx_max_abs_diff": float(np.max(np.abs(got - expected))),
      "onnx_argmax_agreement": float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1))),
  }
