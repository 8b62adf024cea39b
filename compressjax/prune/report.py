"""Sparsity report: per-layer and global counts, sparsity and bytes dense vs compressed.

Compressed bytes assume the simplest sparse layout, a bitmap: the nonzero values plus one bit
per weight (N:M kernels are smaller still, see ``NMArray.nbytes``). Layers without a mask count as
dense in both columns.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from compressjax.prune.selection import leaf_paths


def _layer(kept: int, total: int, itemsize: int, masked: bool) -> dict[str, Any]:
  dense = total * itemsize
  return {
      "total": total, "nonzero": kept, "sparsity": 1.0 - kept / total if total else 0.0,
      "dense_bytes": dense,
      "compressed_bytes": kept * itemsize + math.ceil(total / 8) if masked else dense,
  }


def sparsity_report(params: Any, masks: Any) -> dict[str, Any]:
  """{'layers': {path: stats}, 'pruned': stats over masked layers, 'total': stats over all params}.

  stats: total, nonzero (kept by the mask), sparsity, dense_bytes, compressed_bytes.
  """
  mask_by_path = dict(leaf_paths(masks))
  layers = {}
  for path, p in leaf_paths(params):
    itemsize = np.dtype(p.dtype).itemsize
    m = mask_by_path.get(path)
    kept = int(np.asarray(jax.device_get(m)).sum()) if m is not None else p.size
    layers[path] = _layer(kept, p.size, itemsize, m is not None)

  def total(paths: list[str]) -> dict[str, Any]:
    out = {k: sum(layers[p][k] for p in paths)
           for k in ("total", "nonzero", "dense_bytes", "compressed_bytes")}
    out["sparsity"] = 1.0 - out["nonzero"] / out["total"] if out["total"] else 0.0
    return out

  return {"layers": {p: s for p, s in layers.items() if p in mask_by_path},
          "pruned": total(list(mask_by_path)), "total": total(list(layers))}


def format_report(report: dict[str, Any]) -> str:
  """A printable table of a ``sparsity_report``."""
  rows = [(p, s) for p, s in report["layers"].items()]
  rows += [("[pruned layers]", report["pruned"]), ("[all params]", report["total"])]
  width = max(len(p) for p, _ in rows)
  lines = [f"{'layer':<{width}}  {'params':>9}  {'nonzero':>9}  {'sparsity':>8}  "
           f"{'dense B':>9}  {'sparse B':>9}"]
  for p, s in rows:
    lines.append(f"{p:<{width}}  {s['total']:>9}  {s['nonzero']:>9}  {s['sparsity']:>8.1%}  "
                 f"{s['dense_bytes']:>9}  {s['compressed_bytes']:>9}")
  return "\n".join(lines)
