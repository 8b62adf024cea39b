"""The ``compressjax`` command: ``train``, ``eval`` and ``demo``.

Bad input (unknown dataset/model/config key, missing offline data, a download without
network, a checkpoint of another model) ends with one ``compressjax: error: ...`` line and
exit status 2; ``--debug`` shows the traceback instead.
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from compressjax.config import get_config

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ConnectionError)


def run_demo(workdir: str = "runs/demo", *, overrides: Sequence[str] = (),
             reuse: bool = False) -> dict[str, Any]:
  """The main job (:func:`compressjax.pipeline.run_story`); returns the ``summary.json`` dict.

  Float teacher -> uniform QAT baselines -> a W4A4, 50%-pruned, distilled student -> packed
  integers served (int8 dot/conv, low-bit kernels or XLA dequantize, per site) -> report (JSON,
  Markdown, PNG) in ``workdir``.
  """
  from compressjax.pipeline import run_story  # pylint: disable=g-import-not-at-top

  return run_story(workdir, overrides, reuse=reuse)


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
  from compressjax._story_report import text  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  summary = run_demo(args.workdir, overrides=args.set, reuse=args.reuse)
  print()
  print(text(summary))
  print(f"total {time.time() - t0:.1f}s")


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

  demo = commands.add_parser(
      "demo", help="the main job: train, quantize + prune + distil, export, serve, report")
  demo.add_argument("--workdir", default="runs/demo")
  demo.add_argument("--reuse", action="store_true",
                    help="load a finished float run in <workdir>/float instead of retraining")
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
