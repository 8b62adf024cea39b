"""Training throughput (images/s) of ResNet-20 through ``fit``: float and QAT (LSQ W4A4), on 1
and N devices (data parallel).

Each device count runs in its own subprocess (on CPU, N devices are forced host devices,
``--xla_force_host_platform_device_count=N``, set before the subprocess imports JAX). A run
is the real loop (sharded state, per-process batches, background prefetch, pinned shardings);
throughput is measured between the train records of step ``warmup`` and the last step (both
synchronise on the metrics), so compilation is excluded and the final checkpoint comes after.

  python benchmarks/throughput.py [--devices 1 8] [--batch 64] [--warmup 2] [--steps 4]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import jax
import numpy as np
import optax

from compressjax.config import TrainConfig
from compressjax.core import compress, discover
from compressjax.data import ArraySplit
from compressjax.models import get_model
from compressjax.quant.recipes import recipe_rules
from compressjax.train import create_train_state, fit, make_train_step, read_metrics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CPU_NOTE = ("forced host devices share the machine's CPU cores: N-device numbers exercise the "
            "sharded loop, they are no parallel speed-up (on a loaded host, a process with more "
            "device threads also gets a larger share of the cores)")


def measure(method: str | None, batch: int, warmup: int, steps: int) -> dict:
  """One run of ``fit`` (in this process, on all its devices); returns its throughput."""
  total = warmup + steps
  rng = np.random.default_rng(0)
  data = ArraySplit(rng.standard_normal((batch * total, 32, 32, 3)).astype(np.float32),
                    rng.integers(0, 10, batch * total).astype(np.int32))
  model = get_model("resnet20", 10)
  if method is not None:
    model = compress(model, recipe_rules(method, discover(model, data.x[:1], train=False),
                                         w_bits=4, a_bits=4))
  optimizer = optax.sgd(0.01, momentum=0.9)
  state = create_train_state(model, optimizer, data.x[:batch], jax.random.PRNGKey(0))
  cfg = TrainConfig(steps=total, batch_size=batch, log_every_steps=warmup,
                    eval_every_epochs=None, checkpoint_every_steps=total, progress=False)
  with tempfile.TemporaryDirectory() as workdir:
    fit(state, make_train_step(model, optimizer), data, cfg, workdir=workdir)
    records = {r["step"]: r for r in read_metrics(workdir) if r["split"] == "train"}
  seconds = records[total]["elapsed_s"] - records[warmup]["elapsed_s"]
  return {"model": "resnet20", "method": method or "float", "bits": 4 if method else 32,
          "devices": jax.device_count(), "batch": batch, "steps": steps,
          "step_ms": 1e3 * seconds / steps, "images_per_s": batch * steps / seconds}


def worker(args: argparse.Namespace) -> None:
  rows = [measure(m, args.batch, args.warmup, args.steps) for m in (None, "lsq")]
  print(json.dumps(rows))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  rows = []
  for n in args.devices:
    env = {**os.environ,
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                        f"--xla_force_host_platform_device_count={n}".strip()}
    command = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--warmup",
               str(args.warmup), "--steps", str(args.steps)]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    rows += json.loads(out.strip().splitlines()[-1])
  device = jax.devices()[0]
  for r in rows:
    print(f"resnet20 {r['method']:>5} on {r['devices']} device(s), batch {r['batch']}: "
          f"{r['images_per_s']:.1f} images/s ({r['step_ms']:.0f} ms/step)")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, f"throughput_{device.device_kind.replace(' ', '_')}.json")
  with open(path, "w") as f:
    json.dump({"device": device.device_kind, "platform": device.platform,
               "host": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "load_avg_1m": os.getloadavg()[0], "jax": jax.__version__,
               "command": " ".join(["python benchmarks/throughput.py", *sys.argv[1:]]),
               **({"note": CPU_NOTE} if device.platform == "cpu" else {}),
               "results": rows}, f, indent=2)
  print(f"saved {path}")


if __name__ == "__main__":
  main()
