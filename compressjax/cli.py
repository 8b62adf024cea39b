"""The ``compressjax`` command: ``train``, ``eval``, ``export`` and ``demo``.

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
  from compressjax.runs import train_classifier  # pylint: disable=g-import-not-at-top

  cfg = get_config(args.config, args.set)
  workdir = args.workdir or os.path.join("runs", cfg.name)
  summary = train_classifier(cfg, workdir)
  print(json.dumps(summary, indent=2))


def _eval(args: argparse.Namespace) -> None:
  from compressjax.runs import evaluate_workdir  # pylint: disable=g-import-not-at-top

  result = evaluate_workdir(args.workdir, args.step)
  print(f"{result['dataset']} / {result['model']} step {result['step']}: "
        f"test accuracy {100 * result['test_accuracy']:.2f}% (loss {result['test_loss']:.4f})")


def export_workdir(workdir: str, out_dir: str | None = None, *, step: int | None = None,
                   formats: Sequence[str] = ("stablehlo", "onnx"),
                   sparse: dict[str, str] | None = None, inputs: int = 16) -> dict[str, Any]:
  """Exports a ``compressjax train`` run's checkpoint (QAT runs to packed integers, float runs
  as they are) and writes its artifacts (:func:`compressjax.artifacts.write_artifacts`) to
  ``out_dir`` (default ``<workdir>/artifacts``), checked on the first ``inputs`` test images.

  Returns the artifacts' report plus the run, the float parameter bytes and ``export.json``'s
  path (the report is also written there).
  """
  import dataclasses  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from compressjax.artifacts.write import check_formats, write_artifacts  # pylint: disable=g-import-not-at-top
  from compressjax.config import MeshConfig, load_config  # pylint: disable=g-import-not-at-top
  from compressjax.core.compress import SITE_PARAMS, STATS, is_compressed  # pylint: disable=g-import-not-at-top
  from compressjax.export import export, size_report  # pylint: disable=g-import-not-at-top
  from compressjax.runs import setup  # pylint: disable=g-import-not-at-top
  from compressjax.runs.classifier import CONFIG_FILE  # pylint: disable=g-import-not-at-top
  from compressjax.train.checkpoint import Checkpoints  # pylint: disable=g-import-not-at-top

  check_formats(formats)
  if inputs < 1:
    raise ValueError(f"--inputs={inputs}; allowed: >= 1 test images")
  workdir = os.path.abspath(workdir)
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise FileNotFoundError(f"{workdir} is not a training run (no {CONFIG_FILE}); run "
                            "`compressjax train --workdir DIR` first")
  checkpoints = Checkpoints(workdir, create=False)
  try:
    cfg = load_config(os.path.join(workdir, CONFIG_FILE))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mesh=MeshConfig()))
    s = setup(cfg, abstract=True)
    step = checkpoints.latest_step() if step is None else step
    variables = checkpoints.restore_variables(s.state.variables, step)
  finally:
    checkpoints.close()
  images = s.dataset.test.take(np.arange(min(inputs, len(s.dataset.test))))[0]
  if is_compressed(s.model):
    serving_model, serving_vars = export(s.model, variables, images[:1], train=False)
  else:
    serving_model, serving_vars = s.model, variables
  out_dir = os.path.abspath(out_dir or os.path.join(workdir, "artifacts"))
  report = write_artifacts(serving_model, serving_vars, images, out_dir, sparse=sparse,
                           formats=tuple(formats))
  float_params = {k: v for k, v in variables["params"].items() if k != SITE_PARAMS}
  float_vars = {**{k: v for k, v in variables.items() if k != STATS}, "params": float_params}
  report.update(workdir=workdir, out_dir=out_dir, step=step,
                quant=dataclasses.asdict(cfg.quant) if cfg.quant.method else None,
                float_bytes=size_report(float_vars, tuple(float_vars)).total_bytes,
                inputs=len(images), report=os.path.join(out_dir, "export.json"))
  with open(report["report"], "w") as f:
    json.dump(report, f, indent=2)
  return report


def _export(args: argparse.Namespace) -> None:
  sparse = dict(_site_format(item) for item in args.sparse)
  r = export_workdir(args.workdir, args.out, step=args.step, formats=args.format.split(","),
                     sparse=sparse or None, inputs=args.inputs)
  q = r["quant"]
  print(f"{r['workdir']} step {r['step']}: "
        + (f"{q['method']} W{q['w_bits']}A{q['a_bits']}" if q else "float") + f" -> {r['out_dir']}")
  stored = r.get("sparse_weights_bytes", r["weights_bytes"])
  print(f"  weights: float parameters {r['float_bytes']:,} B -> served arrays {stored:,} B "
        f"({stored / r['float_bytes']:.2f}x" + (", sparse sites stored sparse)" if "sparse" in r
                                                 else ")"))
  files = [("stablehlo/model.stablehlo", "stablehlo_module_bytes"),
           ("stablehlo/expand.stablehlo", "stablehlo_expand_bytes"),
           ("stablehlo/weights.safetensors", "stablehlo_weights_bytes"),
           ("model.onnx", "onnx_bytes")]
  for name, key in files:
    if key in r:
      print(f"  {name:<30} {r[key]:>9,} B  ({r[key] / r['float_bytes']:.2f}x the float "
            f"parameters, {r['float_bytes']:,} B)")
  for name, label in (("stablehlo", "StableHLO"), ("onnx", "ONNX (onnxruntime)")):
    if f"{name}_max_abs_diff" in r:
      print(f"  served vs {label} on {r['inputs']} test images: argmax agreement "
            f"{r[f'{name}_argmax_agreement']:.2%}, "
            f"max |logit diff| {r[f'{name}_max_abs_diff']:.2e}")
  print(f"  report: {r['report']}")


def _site_format(item: str) -> tuple[str, str]:
  from compressjax.artifacts.sparse import parse_format  # pylint: disable=g-import-not-at-top

  site, sep, fmt = item.partition("=")
  if not sep or not site:
    raise ValueError(f"--sparse {item!r} must look like SITE=FORMAT, e.g. conv1/kernel=bitmap "
                     "or hidden/kernel=2:4")
  parse_format(fmt, site)
  return site, fmt


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

  exporter = commands.add_parser(
      "export", help="write a run's StableHLO and ONNX artifacts, with sizes and agreement")
  exporter.add_argument("--workdir", required=True, help="a `compressjax train` run directory")
  exporter.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  exporter.add_argument("--out", help="artifact directory (default <workdir>/artifacts)")
  exporter.add_argument("--format", default="stablehlo,onnx",
                        help="comma-separated artifact formats (default stablehlo,onnx)")
  exporter.add_argument("--sparse", action="append", default=[], metavar="SITE=FORMAT",
                        help="store a served weight sparse: bitmap or N:M (repeatable)")
  exporter.add_argument("--inputs", type=int, default=16,
                        help="test images the agreement is checked on (default 16)")
  exporter.set_defaults(func=_export)

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
