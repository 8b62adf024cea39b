"""Where QAT's train-step overhead goes: compile phases, kernels, and kernel time per kind.

For each model of ``benchmarks/qat_step.py`` (same steps: ``make_train_step`` jitted with the
state donated), float against the quantized step:
- ``phases``: trace, lower and XLA compile seconds, each the minimum over ``--compile-reps``
  freshly built steps, float and QAT interleaved;
- ``kernels``: the optimized HLO's top-level fusions by kind, its other instructions and its
  parameters (state leaves and batch), per step;
- ``kernel_us``: microseconds per step spent in each kind of kernel (an HLO instruction's name
  with its ``.N`` suffix dropped: ``select_reduce_fusion``, ``dot``, ...) under
  ``jax.profiler``, over ``--reps`` steps; ``added`` lists the kinds QAT adds most time to.

The profiler slows every kernel a little, float and QAT alike; the per-kind figures say where
the difference lies, ``qat_step.py`` says how large it is.

  python benchmarks/qat_overhead.py [--models cnn vit] [--method lsq] [--reps 20]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _results  # pylint: disable=g-import-not-at-top
from benchmarks.qat_step import MODELS, _optimizer, _step_and_state, _train_step, float_and_qat


def _phases(models: dict, states: dict, batches: dict, reps: int) -> dict:
  """Min seconds of trace / lower / compile per model, interleaved over ``reps`` fresh steps."""
  seconds = {k: collections.defaultdict(list) for k in models}
  for _ in range(reps):
    for k, model in models.items():
      step = _train_step(model, _optimizer(False))
      t0 = time.perf_counter()
      traced = step.trace(states[k], batches[k])
      t1 = time.perf_counter()
      lowered = traced.lower()
      t2 = time.perf_counter()
      lowered.compile()
      t3 = time.perf_counter()
      for phase, dt in (("trace", t1 - t0), ("lower", t2 - t1), ("compile", t3 - t2)):
        seconds[k][phase].append(dt)
  return {k: {p: min(v) for p, v in s.items()} for k, s in seconds.items()}


def _entry(hlo_text: str) -> list[str]:
  """The instruction lines of the optimized module's entry computation."""
  return hlo_text[hlo_text.index("\nENTRY"):].splitlines()[1:]


def _kernels(hlo_text: str) -> dict:
  """Top-level fusions by kind, other instructions by opcode, in the entry computation."""
  counts = collections.Counter()
  for line in _entry(hlo_text):
    op = re.search(r"= (?:\([^=]*?\)|\S+) ([\w-]+)\(", line)
    if not op:
      continue
    kind = re.search(r"kind=(\w+)", line) if op.group(1) == "fusion" else None
    counts[f"fusion:{kind.group(1)}" if kind else op.group(1)] += 1
  return dict(counts.most_common())


def _instruction_names(hlo_text: str) -> set[str]:
  return {m.group(1) for line in _entry(hlo_text)
          if (m := re.match(r"\s*(?:ROOT )?%?([\w.-]+) = ", line))}


def _kernel_us(step, state, batch, names: set[str], reps: int) -> tuple[dict, dict]:
  """Microseconds and launches per step of each kind of kernel, over ``reps`` profiled steps."""
  for _ in range(3):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(reps):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
    (path,) = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  us, launches = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      kind = re.sub(r"\.\d+$", "", e["name"])
      us[kind] += e["dur"] / reps
      launches[kind] += 1 / reps
  return dict(us.most_common()), {k: round(v) for k, v in launches.items()}


def bench(name: str, method: str, bits: int, reps: int, compile_reps: int) -> dict:
  model, qmodel, x, y = float_and_qat(name, 0, method, bits)
  models = {"float": model, "qat": qmodel}
  runs = {k: _step_and_state(m, x, y, False) for k, m in models.items()}
  states = {k: r[1] for k, r in runs.items()}
  batches = {k: r[2] for k, r in runs.items()}
  row = {"model": name, "batch": len(x), "method": method, "bits": bits,
         "phases_s": _phases(models, states, batches, compile_reps)}
  for k, (step, state, batch) in runs.items():
    hlo = step.lower(state, batch).compile().as_text()
    row.setdefault("kernels", {})[k] = _kernels(hlo)
    us, launches = _kernel_us(step, state, batch, _instruction_names(hlo), reps)
    row.setdefault("kernel_us", {})[k] = {"total": sum(us.values()), "by_kind": us,
                                          "launches": launches}
  f, q = (row["kernel_us"][k] for k in ("float", "qat"))
  added = {kind: q["by_kind"][kind] - f["by_kind"].get(kind, 0.0) for kind in q["by_kind"]}
  row["added"] = [{"kind": kind, "us": us, "launches": q["launches"][kind]
                   - f["launches"].get(kind, 0)}
                  for kind, us in sorted(added.items(), key=lambda kv: -kv[1])[:12]]
  row["load_average"] = os.getloadavg()
  return row


def _print(row: dict) -> None:
  ph = row["phases_s"]
  print(f"{row['model']}: " + ", ".join(
      f"{p} {ph['float'][p]:.3f} -> {ph['qat'][p]:.3f} s ({ph['qat'][p] / ph['float'][p]:.2f}x)"
      for p in ph["float"]))
  for k in ("float", "qat"):
    print(f"  {k:>5}: kernels {row['kernels'][k]}; {row['kernel_us'][k]['total']:.0f} us/step")
  for a in row["added"]:
    print(f"    +{a['us']:7.1f} us  {a['launches']:+4d} launches  {a['kind']}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["cnn", "vit"])
  parser.add_argument("--method", default="lsq")
  parser.add_argument("--bits", type=int, default=4)
  parser.add_argument("--reps", type=int, default=20, help="profiled steps per model")
  parser.add_argument("--compile-reps", type=int, default=3)
  parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
  args = parser.parse_args()
  rows = []
  for name in args.models:
    rows.append(bench(name, args.method, args.bits, args.reps, args.compile_reps))
    _print(rows[-1])
  device = jax.devices()[0]
  _results.save({"device": device.device_kind, "jax": jax.__version__, "results": rows},
                "qat_overhead", quick=False, out=args.out)


if __name__ == "__main__":
  main()
