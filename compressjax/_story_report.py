"""Renders the summary of :func:`compressjax.pipeline.run_story`: terminal text, Markdown, PNG.

Everything shown is read from the summary dict, so the three views cannot disagree with
``summary.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

MODEL_HEADER = ("model", "test acc (served)", "fake-quant", "bytes", "vs float", "BitOPs",
                "time")
LAYER_HEADER = ("site", "op", "served as", "MACs", "params", "bits w/a", "sparsity",
                "zeros served", "bytes float -> served", "BitOPs")
_OPS = {"dot_general": "dot", "conv_general_dilated": "conv"}


def _pct(x: float | None) -> str:
  return "-" if x is None else f"{100 * x:.2f}%"


def _count(x: float) -> str:
  return f"{x / 1e6:,.2f}M" if x >= 1e6 else f"{x:,.0f}"


def _bits(b: int | None) -> str:
  return "fp32" if b is None else str(b)


def _smaller(reference: int, nbytes: int) -> str:
  return f"{reference / nbytes:.1f}x smaller" if nbytes < reference else "1.0x"


def model_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
  """One row per model (float, baselines, student), plus the student's sparse-storage bytes."""
  float_bytes = summary["models"][0]["bytes"]
  rows = []
  for m in summary["models"]:
    rows.append((m["label"], _pct(m["accuracy"]), _pct(m["fake_quant_accuracy"]),
                 f"{m['bytes']:,}", _smaller(float_bytes, m["bytes"]), _count(m["bitops"]),
                 f"{m['time_s']:.1f}s"))
    if "sparse_bytes" in m:
      rows.append(("  same, pruned kernels as bitmap + nonzero codes", _pct(m["accuracy"]), "-",
                   f"{m['sparse_bytes']:,}", _smaller(float_bytes, m["sparse_bytes"]), "-", "-"))
  return rows


def layer_rows(summary: dict[str, Any]) -> list[tuple[str, ...]]:
  """One row per weight site of the student (``module/param``), with its serving path."""
  rows = []
  for layer in summary["layers"]:
    sparsity = layer["sparsity"]
    rows.append((layer["site"], _OPS.get(layer["op"], layer["op"]), layer["serving_path"],
                 _count(layer["macs"]), f"{layer['params']:,}",
                 f"{_bits(layer['w_bits'])}/{_bits(layer['a_bits'])}",
                 "-" if sparsity is None else f"{100 * sparsity:.1f}%",
                 f"{100 * layer['served_zeros']:.1f}%",
                 f"{layer['float_bytes']:,} -> {layer['served_bytes']:,}",
                 _count(layer["bitops"])))
  return rows


def check_lines(summary: dict[str, Any]) -> list[str]:
  c = summary["checks"]
  n = summary["test_examples"]
  d = c["dispatch"]
  backends = ", ".join(f"{p} -> {b}" for p, b in d["backends"].items()) or "none"
  agree = ", ".join(f"{name} {n - k}/{n}" for name, k in c["prediction_mismatches"].items())
  moved = ", ".join(f"{name} {k}" for name, k in c["images_with_moved_logits"].items())
  return [
      f"served vs fake-quant predictions on the test images agree: {agree} (max |logit diff| "
      f"{c['max_logit_diff']:.2e}; images with a logit moved by a code rounded apart: {moved})",
      f"pruned weights exactly zero in the served kernels: "
      f"{'yes' if c['pruned_zero_when_served'] else 'NO'}",
      f"kernel dispatcher ({d['platform']}, {d['rows']} rows) for the served dot sites: "
      f"{backends}",
  ]


def timing_line(summary: dict[str, Any]) -> str:
  return "stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items())


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
  return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _headline(summary: dict[str, Any]) -> str:
  st, s = summary["story"], summary["student"]
  return (f"{summary['dataset']} / {summary['model']} ({summary['params']:,} params, "
          f"{_count(summary['macs'])} MACs per example); student: {st['method']} "
          f"W{st['w_bits']}A{st['a_bits']} (first/last layer {st['edge_bits']}-bit) + "
          f"{st['sparsity']:.0%} magnitude pruning + KD (T={st['temperature']:g}, "
          f"alpha={st['alpha']:g}), {s['epochs']:g} epoch{'s' * (s['epochs'] != 1)} "
          f"({s['steps']} steps) from the teacher's weights")


def text(summary: dict[str, Any]) -> str:
  """The terminal summary: headline, models table, student layers table, checks, timings."""
  files = summary["files"]
  return "\n".join([
      _headline(summary), "", _aligned(MODEL_HEADER, model_rows(summary)), "",
      _aligned(LAYER_HEADER, layer_rows(summary)), "", *check_lines(summary),
      timing_line(summary),
      f"report: {files['markdown']} (+ {os.path.basename(files['json'])}, "
      f"{os.path.basename(files['plot'])})"])


def markdown(summary: dict[str, Any]) -> str:
  """``summary.md``: the same tables and checks as the terminal, with the plot."""
  f = summary["float"]
  return "\n".join([
      "# compressjax demo", "", _headline(summary) + ".", "",
      f"Float teacher: {f['steps']} steps "
      f"({'loaded from a finished run' if f['reused'] else 'trained in this run'}), checkpoint "
      f"`{f['checkpoint']}`. Accuracy is measured on the {summary['test_examples']} test "
      f"images (one seed: one image is {100 / summary['test_examples']:.2f}%); BitOPs per example = MACs x weight bits x input "
      "bits (fp32 operands count 32); bytes are the stored parameters (packed integer codes "
      "and scales for quantized kernels).", "",
      "## Models", "", _markdown_table(MODEL_HEADER, model_rows(summary)), "",
      f"![accuracy vs size]({os.path.basename(summary['files']['plot'])})", "",
      "## Student layers", "", _markdown_table(LAYER_HEADER, layer_rows(summary)), "",
      "## Checks", "", *[f"- {line}" for line in check_lines(summary)], "",
      "## Stages", "", timing_line(summary), ""])


def plot(summary: dict[str, Any], path: str) -> None:
  """Accuracy vs size in bytes (log scale) for every model; written without pyplot's state."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(8.0, 4.0))
  ax = fig.subplots()
  for i, m in enumerate(summary["models"]):
    acc = 100 * m["accuracy"]
    ax.scatter([m["bytes"]], [acc], s=40, color=f"C{i}", zorder=3, label=m["label"])
    if "sparse_bytes" in m:
      ax.scatter([m["sparse_bytes"]], [acc], s=40, facecolors="none", edgecolors=f"C{i}",
                 zorder=3, label="same, bitmap-sparse storage")
      ax.plot([m["sparse_bytes"], m["bytes"]], [acc, acc], ls=":", color=f"C{i}")
  ax.set_xscale("log")
  ax.set_xlabel("size (bytes, log scale)")
  ax.set_ylabel("test accuracy (%)")
  n = summary["test_examples"]
  ax.set_title(f"{summary['dataset']} / {summary['model']}: accuracy vs size "
               f"({n} test images: one is {100 / n:.2f}%)", fontsize=10)
  ax.grid(True, which="both", alpha=0.3)
  ax.margins(x=0.1, y=0.2)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
