"""Regenerates every experiment table: ``python -m experiments.run_all [--quick] [--set lm]
[--only NAME ...]``.

Each experiment is its own module (one result table each, written under experiments/results/);
this runs them one after another in fresh processes and exits non-zero if one failed.
``--quick`` passes each script's CI-sized mode (results named ``*_quick``). ``--set lm`` runs
the language-model set alone, teacher first (the others read its cached checkpoint).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

VISION = ("quantization", "adabits", "fracbits", "pruning", "distill_kd", "cat")
LM = ("lm_teacher", "lm_ptq", "lm_qat", "lm_mixed", "lm_prune")
SETS = {"all": VISION + LM, "vision": VISION, "lm": LM}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="CI-sized runs")
  parser.add_argument("--set", choices=SETS, default="all")
  parser.add_argument("--only", nargs="+", choices=SETS["all"], default=None)
  args = parser.parse_args(argv)
  failed = []
  for name in args.only or SETS[args.set]:
    cmd = [sys.executable, "-m", f"experiments.{name}"] + (["--quick"] if args.quick else [])
    t0 = time.time()
    print(f"== {' '.join(cmd[1:])}", flush=True)
    rc = subprocess.call(cmd)
    print(f"== {name}: exit {rc} after {time.time() - t0:.0f}s", flush=True)
    if rc:
      failed.append(name)
  if failed:
    print(f"failed: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
