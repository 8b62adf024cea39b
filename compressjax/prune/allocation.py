"""Per-layer sparsity from one global target: uniform or Erdos-Renyi-Kernel (ERK).

ERK (Evci et al., RigL) gives layer l a density proportional to ``sum(shape) / prod(shape)``, so
small layers stay denser, scaled so that the total number of kept weights matches the target;
layers whose density would exceed 1 are kept dense and the rest rescaled.
Shapes are static, so this runs in Python once per trace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

ALLOCATIONS = ("uniform", "erk")


def check_sparsity(sparsity: float, what: str = "sparsity") -> None:
  """Refuses a sparsity outside [0, 1), naming what it belongs to."""
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f"{what} must be in [0, 1), got {sparsity!r}")


def uniform(sparsity: float, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
  """Every layer gets the same sparsity."""
  check_sparsity(sparsity)
  return {path: float(sparsity) for path in shapes}


def erk(sparsity: float, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
  """ERK sparsities whose weighted mean (by layer size) equals ``sparsity``."""
  check_sparsity(sparsity)
  sizes = {p: math.prod(s) for p, s in shapes.items()}
  raw = {p: sum(s) / sizes[p] for p, s in shapes.items()}
  dense: set[str] = set()
  while True:
    budget = (1.0 - sparsity) * sum(sizes.values()) - sum(sizes[p] for p in dense)
    denominator = sum(raw[p] * sizes[p] for p in shapes if p not in dense)
    eps = budget / denominator if denominator else 0.0
    over = {p for p in shapes if p not in dense and eps * raw[p] > 1.0}
    if not over:
      break
    dense |= over
  return {p: 0.0 if p in dense else 1.0 - eps * raw[p] for p in shapes}


def allocate(allocation: str, sparsity: float,
             shapes: Mapping[str, tuple[int, ...]]) -> dict[str, float]:
  """Dispatches on the allocation name ('uniform' or 'erk')."""
  if allocation == "uniform":
    return uniform(sparsity, shapes)
  if allocation == "erk":
    return erk(sparsity, shapes)
  raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
