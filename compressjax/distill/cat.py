"""CAT one-step pruning of an inception generator (Jin et al., "Teachers Do More Than Teach").

The generator is any module with ``down_widths``, ``block_widths`` and ``up_widths`` fields and
the norm paths of :class:`compressjax.models.generator.Generator` (``down_{i}_norm``,
``block_{i}/branch_{j}/norm1``, ``up_{i}_norm``); ``clone`` builds the thinner one.

The magnitudes |gamma| of the prunable norms -- the down-sampling norms, the first norm of every
branch and the up-sampling norms -- are pooled, and one global threshold is bisected (outside
``jit``: shapes change) until the thinner generator's MACs, measured by ``compressjax.cost``, are
at or under the target. A norm keeps the channels whose |gamma| exceeds the threshold; a branch
left with no channel is removed; down/up-sampling layers keep at least ``min_width`` channels.
The last down-sampling norm sets the width of the residual stream the blocks share.

The result is an architecture: CAT re-initialises the student (N(0, 0.02) kernels, N(1, 0.02)
gammas: the generator's own initialisers, or ``pix2pix_init`` which draws the same with numpy)
and trains it with distillation (``distill.pix2pix``). ``PruneResult.kept`` still names the kept
channels, for anyone who prefers to copy the teacher's slices instead.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PruneResult:
  """The pruned architecture and how it was found (MACs per example)."""
  generator: nn.Module
  threshold: float
  macs: float
  target_macs: float
  original_macs: float
  kept: dict[str, np.ndarray]  # norm path -> indices of the kept channels


def prunable_scales(generator: nn.Module, params: Any) -> dict[str, np.ndarray]:
  """|gamma| of CAT's prunable norms, by path (down, branch first norms, up)."""
  p = params.get("params", params)
  out = {}
  try:
    for i in range(len(generator.down_widths)):
      out[f"down_{i}_norm"] = p[f"down_{i}_norm"]["scale"]
    for i, widths in enumerate(generator.block_widths):
      for j, w in enumerate(widths):
        if w > 0:
          out[f"block_{i}/branch_{j}/norm1"] = p[f"block_{i}"][f"branch_{j}"]["norm1"]["scale"]
    for i in range(len(generator.up_widths)):
      out[f"up_{i}_norm"] = p[f"up_{i}_norm"]["scale"]
  except KeyError as e:
    raise ValueError(f"params do not belong to this generator: missing {e}; top-level keys: "
                     f"{sorted(p)}") from e
  return {k: np.abs(np.asarray(v)) for k, v in out.items()}


def _keep(scales: np.ndarray, threshold: float, min_width: int) -> np.ndarray:
  """Indices of channels above the threshold, topped up to ``min_width`` by magnitude."""
  order = np.argsort(-scales, kind="stable")
  n = max(int(np.sum(scales > threshold)), min(min_width, scales.size))
  return np.sort(order[:n])


def prune_at(generator: nn.Module, scales: dict[str, np.ndarray], threshold: float,
             min_width: int = 16) -> tuple[nn.Module, dict[str, np.ndarray]]:
  """The generator keeping channels with |gamma| > threshold, and the kept indices per norm."""
  kept = {path: _keep(s, threshold, 0 if "/branch_" in path else min_width)
          for path, s in scales.items()}
  down = tuple(kept[f"down_{i}_norm"].size for i in range(len(generator.down_widths)))
  up = tuple(kept[f"up_{i}_norm"].size for i in range(len(generator.up_widths)))
  blocks = tuple(
      tuple(kept[f"block_{i}/branch_{j}/norm1"].size if w > 0 else 0 for j, w in enumerate(ws))
      for i, ws in enumerate(generator.block_widths))
  return generator.clone(down_widths=down, block_widths=blocks, up_widths=up), kept


def generator_macs(generator: nn.Module, example_input: Any) -> float:
  """MACs per example of ``generator`` on inputs shaped like ``example_input`` (cost model)."""
  from compressjax import cost  # pylint: disable=g-import-not-at-top  (cost is optional here)

  spec = jax.ShapeDtypeStruct((1, *example_input.shape[1:]), jnp.float32)
  return cost.profile(generator, spec).macs


def cat_prune(generator: nn.Module, params: Any, example_input: Any, target_macs: float,
              min_width: int = 16) -> PruneResult:
  """Bisects one global |gamma| threshold so the pruned generator's MACs <= ``target_macs``.

  The threshold is searched over the pooled |gamma| values themselves, so the answer is exact:
  the smallest threshold (the widest network) whose MACs fit. Raises ValueError when even the
  minimum network (no branches, ``min_width`` down/up channels) exceeds the target.
  """
  if min_width < 1:
    raise ValueError(f"min_width must be >= 1, got {min_width}")
  scales = prunable_scales(generator, params)
  original = generator_macs(generator, example_input)
  candidates = np.unique(np.concatenate([s.ravel() for s in scales.values()]))
  macs_cache: dict[int, float] = {}

  def macs_at(i: int) -> float:  # i = -1: keep every channel
    if i not in macs_cache:
      t = -np.inf if i < 0 else float(candidates[i])
      macs_cache[i] = generator_macs(prune_at(generator, scales, t, min_width)[0], example_input)
    return macs_cache[i]

  last = candidates.size - 1
  if macs_at(last) > target_macs:
    raise ValueError(
        f"target_macs {target_macs:,.0f} is below the MACs of the smallest generator CAT can build "
        f"({macs_at(last):,.0f}: no branches, down/up widths >= min_width={min_width}); the "
        f"original has {original:,.0f}. Raise the target or lower min_width.")
  lo, hi = -1, last  # invariant: macs_at(hi) <= target; find the smallest such index
  if macs_at(lo) <= target_macs:
    hi = lo
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if macs_at(mid) <= target_macs:
      hi = mid
    else:
      lo = mid
  threshold = -np.inf if hi < 0 else float(candidates[hi])
  pruned, kept = prune_at(generator, scales, threshold, min_width)
  return PruneResult(pruned, threshold, macs_at(hi), float(target_macs), original, kept)
