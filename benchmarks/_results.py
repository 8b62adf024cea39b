"""Where the benchmarks write their figures: ``benchmarks/results/<name>_<backend>[_quick].json``."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def save(result: dict[str, Any], name: str, *, quick: bool, out: str | None = None) -> str:
  """Writes ``result`` as JSON to ``out`` (default: the results folder, named by ``name``, the
  JAX backend and ``quick``), prints and returns the path."""
  out = out or os.path.join(RESULTS, f"{name}_{jax.default_backend()}{'_quick' if quick else ''}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"saved {out}")
  return out
