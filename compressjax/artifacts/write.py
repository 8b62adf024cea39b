"""Both artifacts of a serving model in one directory, with their sizes and a cross-check."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from compressjax.artifacts.onnx_graph import save_onnx
from compressjax.artifacts.serving_fn import serving_function
from compressjax.artifacts.sparse import pack_sites
from compressjax.artifacts.stablehlo import load_stablehlo, save_stablehlo

FORMATS = ("stablehlo", "onnx")


def check_formats(formats) -> None:
  """Refuses an artifact format that is not one of :data:`FORMATS` (or none at all)."""
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"unknown artifact format {(unknown or [''])[0]!r}; allowed: "
                     f"{', '.join(FORMATS)} (one or both)")


def write_artifacts(serving_model: Any, serving_vars: dict | None, example_input: Any,
                    out_dir: str, *, sparse: dict[str, str] | None = None,
                    formats: tuple[str, ...] = FORMATS) -> dict:
  """Writes ``out_dir/stablehlo/`` and ``out_dir/model.onnx``; returns sizes and agreement.

  ``formats`` chooses which of the two (:data:`FORMATS`) are written.

  The agreement runs ``example_input`` (an array: it is also the check's batch; the artifacts
  take any batch size) through JAX, the loaded StableHLO artifact and onnxruntime:
  ``*_max_abs_diff`` of the outputs and ``*_argmax_agreement`` (the fraction of rows whose
  last-axis argmax is equal). Sizes are in bytes; ``weights_bytes`` counts the serving
  variables' leaves (packed QArrays).

  ``sparse`` (site name -> "bitmap" or "N:M"): those served weights are stored sparse in the
  StableHLO artifact (``stablehlo_weights_bytes`` shrinks; ``sparse_weights_bytes`` counts the
  serving arrays with them stored sparse, whichever formats are written). The ONNX file keeps
  them as dense int8 initializers (an ONNX sparse initializer stores an int64 index per
  nonzero: more bytes than the int8 codes it would drop), so ``onnx_bytes`` does not shrink.
  """
  check_formats(formats)
  os.makedirs(out_dir, exist_ok=True)
  fn, leaves, _ = serving_function(serving_model, serving_vars)
  x = np.asarray(example_input)
  expected = np.asarray(jax.jit(fn)(leaves, x))
  report, outputs = {"weights_bytes": sum(v.nbytes for v in leaves)}, {}
  if sparse:
    packed = pack_sites(serving_vars, sparse)
    report.update(sparse=dict(sparse), sparse_weights_bytes=sum(
        int(np.asarray(v).nbytes) for v in jax.tree_util.tree_leaves(packed)))
  if "stablehlo" in formats:
    hlo_dir = os.path.join(out_dir, "stablehlo")
    manifest = save_stablehlo(serving_model, serving_vars, x, hlo_dir, sparse=sparse)
    report.update(stablehlo_module_bytes=manifest["module_bytes"],
                  stablehlo_weights_bytes=manifest["weights_bytes"])
    if sparse:
      report["stablehlo_expand_bytes"] = manifest["expand_bytes"]
    outputs["stablehlo"] = np.asarray(load_stablehlo(hlo_dir)(x))
  if "onnx" in formats:
    import onnxruntime  # pylint: disable=g-import-not-at-top

    onnx_path = os.path.join(out_dir, "model.onnx")
    report["onnx_bytes"] = save_onnx(serving_model, serving_vars, x, onnx_path)
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    outputs["onnx"] = session.run(None, {"input": x})[0]
  for name, got in outputs.items():
    report[f"{name}_max_abs_diff"] = float(np.max(np.abs(got - expected)))
    report[f"{name}_argmax_agreement"] = float(np.mean(np.argmax(got, -1) ==
                                                       np.argmax(expected, -1)))
  return report
