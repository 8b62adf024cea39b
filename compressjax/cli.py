"""The ``compressjax`` command: ``train``, ``eval`` and ``demo``.

Bad input (unknown dataset/model/config key, missing offline data, a checkpoint of another
model) ends with one ``compressjax: error: ...`` line and exit status 2; ``--debug`` shows the
traceback instead.
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from compressjax.config import get_config

USER_ERRORS = (ValueError, TypeError, FileNotFoundError)
DEMO_CONFIG = "digits_cnn"
DEMO_QAT_OVERRIDES = ("train.epochs=5", "optim.lr=0.02")


def run_demo(workdir: str = "runs/demo", *, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """The end-to-end demo; returns {stage: summary} and writes it to <workdir>/summary.json.

  Stages: 1. train the digits CNN in float (seed 0) into <workdir>/float, from scratch;
  2. quantize it to 4-bit weights and activations (LSQ, first/last layer 8-bit) with QAT,
  export to packed integers and evaluate the served model (<workdir>/w4a4).
  """
  from compressjax.quant.qat import QuantSpec, quantize_classifier  # pylint: disable=g-import-not-at-top
  from compressjax.train import train_classifier  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  float_dir, qat_dir = os.path.join(workdir, "float"), os.path.join(workdir, "w4a4")
  for d in (float_dir, qat_dir):
    shutil.rmtree(d, ignore_errors=True)
  cfg = get_config(DEMO_CONFIG, overrides)
  summary = {"float": train_classifier(cfg, float_dir)}
  qat_cfg = get_config(DEMO_CONFIG, [*DEMO_QAT_OVERRIDES, *overrides])
  summary["w4a4"] = quantize_classifier(qat_cfg, float_dir, qat_dir, QuantSpec("lsq", 4, 4))
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def format_quant_table(summary: dict[str, dict[str, Any]]) -> str:
  """Float vs quantized: served accuracy and bytes of the stored model."""
  q = summary["w4a4"]
  rows = [("model", "test acc", "bytes"),
          ("float32", f"{100 * q['float_accuracy']:.2f}%", f"{q['float_bytes']:,}"),
          (f"{q['method']} W{q['w_bits']}A{q['a_bits']} (exported, served)",
           f"{100 * q['served_accuracy']:.2f}%", f"{q['quantized_bytes']:,}")]
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  ratio = q["float_bytes"] / q["quantized_bytes"]
  return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:],
                    f"size reduction {ratio:.1f}x; QAT {q['time_s']:.1f}s"])


def format_table(summary: dict[str, dict[str, Any]]) -> str:
  """A plain-text table with one row per demo stage."""
  header = ("stage", "dataset", "model", "params", "test acc", "time", "checkpoint")
  rows = [header] + [
      (stage, s["dataset"], s["model"], f"{s['params']:,}", f"{100 * s['test_accuracy']:.2f}%",
       f"{s['time_s']:.1f}s", s["checkpoint"]) for stage, s in summary.items()]
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
  lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _train(args: argparse.Namespace) -> None:
  from compressjax.train import train_classifier  # pylint: disable=g-import-not-at-top

  cfg = get_config(args.config, args.set)
  workdir = args.workdir or os.path.join("runs", cfg.name)
  summary = train_classifier(cfg, workdir)
  print(json.dumps(summary, indent=2))


def _eval(args: argparse.Namespace) -> None:
  from compressjax.train import evaluate_workdir  # pylint: disable=g-import-not-at-top

  result = evaluate_workdir(args.workdir, args.step)
  print(f"{result['dataset']} / {result['model']} step {result['step']}: "
        f"test accuracy {100 * result['test_accuracy']:.2f}% (loss {result['test_loss']:.4f})")


def _demo(args: argparse.Namespace) -> None:
  t0 = time.time()
  summary = run_demo(args.workdir, overrides=args.set)
  print(format_table({"float": summary["float"]}))
  print()
  print(format_quant_table(summary))
  print(f"total {time.time() - t0:.1f}s; summary: {os.path.abspath(args.workdir)}/summary.json")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="compressjax", description="Train, evaluate and compress JAX/Flax classifiers.")
  parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
  commands = parser.add_subparsers(dest="command", required=True)
  overrides = dict(action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. optim.lr=0.05 (repeatable)")

  train = commands.add_parser("train", help="train a model from a config")
  train.add_argument("--config", required=True, help="preset name or path to a .py config")
  train.add_argument("--set", **overrides)
  train.add_argument("--workdir", help="run directory (default runs/<config name>)")
  train.set_defaults(func=_train)

  evaluate = commands.add_parser("eval", help="evaluate a run's checkpoint on its test split")
  evaluate.add_argument("--workdir", required=True)
  evaluate.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  evaluate.set_defaults(func=_eval)

  demo = commands.add_parser("demo", help="train the digits CNN and report")
  demo.add_argument("--workdir", default="runs/demo")
  demo.add_argument("--set", **overrides)
  demo.set_defaults(func=_demo)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except USER_ERRORS as e:
    if args.debug:
      raise
    print(f"compressjax: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
