"""The language-model teacher: a byte-level decoder-only LM trained on the Python standard
library's source (``stdlib_text``), on CPU, with AdamW and a warmup-cosine schedule.

The checkpoint is cached in ``experiments/work/lm/`` (git-ignored) for the later LM
experiments (``lm_common.load_teacher``); a cached teacher with the same configuration is
re-evaluated rather than retrained unless ``--retrain``. Reported: test and validation bits
per byte, and a unigram baseline (test bytes under the train split's byte frequencies).

  python -m experiments.lm_teacher            # results/lm_teacher.{json,md}, work/lm/teacher.*
  python -m experiments.lm_teacher --quick    # tiny model, few steps: *_quick.*
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np

from compressjax.models.lm import LM
from experiments import _report
from experiments.lm_common import (TrainConfig, bits_per_byte, load_corpus, load_teacher,
                                   model_fields, param_count, save_teacher, train)

FULL = TrainConfig(model=LM(width=128, depth=4, heads=4, max_len=128), steps=1200,
                   batch_size=32, lr=3e-3, warmup=100)
# CI-sized: one narrow block and few steps, so the quick paths of every LM script (which read
# this teacher) compile and run in seconds; its bpb is far from converged.
QUICK = TrainConfig(model=LM(width=32, depth=1, heads=4, max_len=128), steps=40,
                    batch_size=8, lr=3e-3, warmup=5)
QUICK_EVAL_WINDOWS = 64  # --quick evaluates the first 64 windows of each split


def unigram_bpb(train: np.ndarray, test: np.ndarray) -> float:
  """Bits per byte of ``test`` under the add-one-smoothed byte frequencies of ``train``."""
  p = (np.bincount(train.ravel(), minlength=256) + 1.0) / (train.size + 256)
  return float(-np.log2(p)[test[:, 1:].ravel()].mean())


def config_dict(cfg: TrainConfig) -> dict:
  fields = model_fields(cfg.model)
  return {"model": ", ".join(f"{k}={v}" for k, v in fields.items()), "steps": cfg.steps, "batch_size": cfg.batch_size,
          "lr": cfg.lr, "warmup": cfg.warmup, "weight_decay": cfg.weight_decay,
          "clip_norm": cfg.clip_norm, "seed": cfg.seed}


def run(cfg: TrainConfig, name: str, retrain: bool, eval_windows: int | None) -> dict:
  corpus, meta = load_corpus()
  evaluated = {s: corpus[s][:eval_windows] for s in ("validation", "test")}
  cached = None if retrain else load_teacher(name)
  if cached is not None and cached[2]["config"] == config_dict(cfg):
    model, params, info = cached
    print(f"reusing the cached teacher {name} (trained in {info['train_seconds']:.0f} s)")
  else:
    start, cpu_start = time.time(), time.process_time()
    params, history = train(cfg, corpus["train"])
    jax.block_until_ready(params)
    model, info = cfg.model, {"config": config_dict(cfg), "history": history,
                              "train_seconds": time.time() - start,
                              "train_cpu_seconds": time.process_time() - cpu_start}
    save_teacher(name, model, params, info)
  window = corpus["train"].shape[1]
  return {
      **info,
      "params": param_count(params),
      "tokens_seen": cfg.steps * cfg.batch_size * (window - 1),
      "test_bpb": bits_per_byte(model, params, evaluated["test"]),
      "valid_bpb": bits_per_byte(model, params, evaluated["validation"]),
      "eval_windows": {s: int(len(t)) for s, t in evaluated.items()},
      "unigram_test_bpb": unigram_bpb(corpus["train"], corpus["test"]),
      "corpus": {**meta, "window": window,
                 "windows": {s: int(len(t)) for s, t in corpus.items()}},
      "machine": {"backend": jax.default_backend(), "cpus": os.cpu_count(),
                  "jax": jax.__version__, "python": platform.python_version(),
                  "load_average_1min_at_end": os.getloadavg()[0]},
  }


def markdown(result: dict, command: str) -> str:
  c = result["corpus"]
  md = "# LM teacher: byte-level decoder-only LM on the Python stdlib source\n\n"
  md += _report.markdown_table(
      ["model", "params", "steps x batch", "train wall / CPU time (s)", "valid bpb", "test bpb",
       "unigram test bpb"],
      [[result["config"]["model"], f"{result['params']:,}",
        f"{result['config']['steps']} x {result['config']['batch_size']}",
        f"{result['train_seconds']:.0f} / {result['train_cpu_seconds']:.0f}",
        f"{result['valid_bpb']:.3f}",
        f"{result['test_bpb']:.3f}", f"{result['unigram_test_bpb']:.3f}"]])
  md += (f"\nCorpus: Python {c['python_version']} stdlib `*.py` (no site-packages or test "
         f"dirs), sha256 `{c['corpus_sha256'][:16]}...`; {c['window']}-byte windows; bytes "
         f"train/validation/test = {c['split_bytes']['train']:,} / "
         f"{c['split_bytes']['validation']:,} / {c['split_bytes']['test']:,} (files "
         f"{c['files']['train']} / {c['files']['validation']} / {c['files']['test']}).\n")
  e, w = result["eval_windows"], c["windows"]
  md += (f"\nbpb evaluated on {e['validation']:,} of {w['validation']:,} validation and "
         f"{e['test']:,} of {w['test']:,} test windows ({c['window'] - 1} predicted bytes each).\n")
  m = result["machine"]
  md += (f"\nTrained on {m['backend']} ({m['cpus']} cores, 1-min load average at the end "
         f"{m['load_average_1min_at_end']:.1f}), jax {m['jax']}; "
         f"{result['tokens_seen']:,} predicted bytes seen. `{command}`\n")
  return md


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny model, few steps (seconds)")
  parser.add_argument("--retrain", action="store_true", help="ignore a cached teacher")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR)
  args = parser.parse_args(argv)
  cfg, name = (QUICK, "teacher_quick") if args.quick else (FULL, "teacher")
  start = time.time()
  result = run(cfg, name, args.retrain, QUICK_EVAL_WINDOWS if args.quick else None)
  result["total_seconds"] = time.time() - start
  command = "python -m experiments.lm_teacher" + (" --quick" if args.quick else "")
  md = markdown(result, command)
  _report.write("lm_teacher_quick" if args.quick else "lm_teacher", result, md,
                out_dir=args.out_dir)
  print(md)
  return result


if __name__ == "__main__":
  main()
