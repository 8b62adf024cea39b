"""The XLA flags of the test processes (see tests/conftest.py) and a rerun under the defaults."""

import os
import subprocess
import sys

import jaxlib

DEFAULT_CODEGEN_ENV = "COMPRESSJAX_TEST_DEFAULT_CODEGEN"
# XLA aborts on a flag it does not know: the emitter switch only where it was measured (0.10).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0" + (
    " --xla_cpu_use_fusion_emitters=false" if jaxlib.__version__.startswith("0.10.") else "")


def apply() -> None:
  """Adds ``TEST_XLA_FLAGS`` to ``XLA_FLAGS`` (before JAX starts its backend), unless this is a
  default-codegen rerun."""
  if not in_default_codegen():
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def in_default_codegen() -> bool:
  return os.environ.get(DEFAULT_CODEGEN_ENV) == "1"


def default_codegen_rerun(test: str) -> None:
  """Runs the test ``test`` ("path::name", every parametrization) in a fresh process with XLA's
  default code generation (no ``TEST_XLA_FLAGS``); fails with its output if it fails."""
  env = {**os.environ, DEFAULT_CODEGEN_ENV: "1"}
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if f not in TEST_XLA_FLAGS.split())
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "-p", "no:xdist", test], cwd=root, env=env, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-2000:]
