"""The non-finite policy: NaN/Inf weights are refused where they would silently break numbers.

Weights are checked (on concrete values) at calibration, init-from-float and export, and the
error names the first bad parameter.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from compressjax.core.tree_paths import flat_paths


def check_finite(tree: Any, where: str) -> None:
  """Raises ValueError naming the first leaf of ``tree`` with a NaN or Inf (concrete leaves)."""
  for path, leaf in flat_paths(tree):
    if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype"):
      continue
    if not np.issubdtype(np.dtype(leaf.dtype), np.floating) and leaf.dtype != jax.numpy.bfloat16:
      continue
    values = np.asarray(leaf, dtype=np.float32)
    if not np.all(np.isfinite(values)):
      bad = int(np.size(values) - np.isfinite(values).sum())
      raise ValueError(
          f"{where}: parameter {path!r} of shape {tuple(values.shape)} has {bad} NaN/Inf "
          "values; compressjax refuses non-finite weights (fix or re-initialise them)")
