"""Writing experiment results: JSON, a Markdown table and mean +- sd over seeds."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def fmt_pct(values: Sequence[float]) -> str:
  """``mean ± sd`` in percent, with the number of seeds when not all ran; "not run" if none."""
  if not len(values):
    return "not run"
  m, s = mean_sd(values)
  return f"{100 * m:.2f} ± {100 * s:.2f} (n={len(values)})"


def mean_sd_cell(values: Sequence[float], n_seeds: int | None = None) -> str:
  """``mean ± sd`` to 4 decimals (the mean alone for one value; "-" for none), with the number of
  values when it is not ``n_seeds``."""
  if not len(values):
    return "-"
  m, s = mean_sd(values)
  return (f"{m:.4f}" + (f" ± {s:.4f}" if len(values) > 1 else "")
          + (f" (n={len(values)})" if n_seeds is not None and len(values) != n_seeds else ""))


def sd_gap(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """``mean(a) - mean(b)`` and that difference in units of the larger of the two sds (inf when
  both sds are 0)."""
  (ma, sa), (mb, sb) = mean_sd(a), mean_sd(b)
  sd = max(sa, sb)
  return ma - mb, (ma - mb) / sd if sd > 0 else float("inf")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def write(name: str, data: Any, markdown: str, out_dir: str = RESULTS_DIR) -> dict[str, str]:
  """Writes ``<name>.json`` and ``<name>.md`` under ``out_dir``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, f"{name}.json"), "md": os.path.join(out_dir, f"{name}.md")}
  with open(paths["json"], "w") as f:
    json.dump(data, f, indent=2)
  with open(paths["md"], "w") as f:
    f.write(markdown)
  return paths


def finish(name: str, result: dict, markdown: str, out_dir: str = RESULTS_DIR,
           plot: Callable[[dict, str], Any] | None = None) -> dict:
  """An experiment's last step: ``<name>.json`` and ``.md`` (and ``plot(result, <name>.png)``)
  under ``out_dir``, the Markdown printed; returns ``result``."""
  write(name, result, markdown, out_dir)
  if plot is not None:
    plot(result, os.path.join(out_dir, f"{name}.png"))
  print(markdown)
  return result


def save_figure(fig: Any, path: str, dpi: int = 120) -> str:
  """Lays out, saves and closes a matplotlib figure (closing frees it in long sweeps)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path
