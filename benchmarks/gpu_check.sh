#!/usr/bin/env bash
# One-GPU check of the low-bit kernels, in at most ~8 minutes:
#   1. the kernel tests on this machine (interpret-mode correctness, Triton/Mosaic lowering);
#   2. benchmarks/matmul_device.py: every sweep case compiled and run on the device, its result
#      checked against the reference (bits 8/4/2 x groups per-channel/128/64 x zero points x
#      bf16/f32 at every (K, N)), then device-timed (M 1..256); tile variants while time is left.
# JSON (rows + a dispatch table) goes to $OUT if set, else benchmarks/results/.
# Exit status: non-zero if a test or any case's correctness check failed.
# Usage: bash benchmarks/gpu_check.sh [extra matmul_device.py flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-benchmarks/results}
export OUT
mkdir -p "$OUT"
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
if "$PY" -c 'import pytest' 2>/dev/null; then  # the tests assume a CPU host: pin them there
  JAX_PLATFORMS=cpu timeout 120 "$PY" -m pytest -q -x tests/kernels -p no:cacheprovider | tail -3
else
  echo "pytest not installed: skipping tests/kernels (the sweep still checks every case)"
fi
timeout 420 "$PY" benchmarks/matmul_device.py --tune --budget-s 330 "$@" 2>&1 | tee "$OUT/gpu_check.log"
