"""Peak resident memory of ``cj.export`` on a model with >= 200 MB of float parameters (CPU).

The model is a stack of ``--layers`` Dense layers of ``--width`` x ``--width`` (default 13 x
2048 x 2048 f32 = 218 MB), compressed with LSQ at 4-bit per-channel weights and 8-bit inputs.
Each measurement runs in a fresh subprocess. By default it first exports a one-layer stack of
the same width, so the eager per-site export ops are compiled (a fixed ~100-200 MB of compiler
memory that does not grow with the model; ``--cold`` skips this and counts it). It then
records the resident set (RSS, /proc/self/status; after ``gc`` and glibc ``malloc_trim``, so
buffers freed earlier are not counted, nor reused unseen by export), builds the float variables
as a checkpoint restore would (host arrays of the init's shapes; no init program compiled) and
the compressed ones (``cj.init_from``), records the RSS again, resets the peak
(``/proc/self/clear_refs`` 5) so it counts export alone, exports, and reads the peak (VmHWM;
ru_maxrss if the reset is refused). Reported, in units of the float parameter bytes:
* ``init_peak_over_float``: the peak while the float and compressed variables are built, minus
  the RSS before (``init_from`` returns the float arrays it was given, not copies);
* ``export_extra``: peak minus the RSS with the float variables in place (what export adds);
* ``peak_over_float``: peak minus the RSS before the model's parameters existed, i.e. float
  params + packed params + export's temporaries (+ the compiled code of ``init_from``'s and,
  cold, export's programs). Goal <= 1.3.
glibc's ``MALLOC_*`` environment (e.g. ``MALLOC_MMAP_THRESHOLD_=1048576``, which returns freed
large buffers to the OS at once) is passed to the subprocess and recorded.

  python benchmarks/export_memory.py [--layers 13] [--width 2048] [--cold] [--label NAME]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rss_bytes(field: str = "VmRSS") -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f"/proc/self/status has no {field}")


def trim_heap() -> None:
  """Returns the C heap's free pages to the OS (glibc ``malloc_trim``), so an RSS reading counts
  live memory, not buffers freed earlier (init leaves ~1x float of them in the heap)."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def loaded_float_variables(model, x) -> dict:
  """Float variables of ``model`` as a checkpoint load gives them: arrays of the shapes its init
  would make (``jax.eval_shape``, nothing compiled), filled on the host (kernels N(0, 1/fan_in),
  biases 0, scales 1) and put on the device. A large model is restored, not initialised, so no
  init program's compiled code sits in the measured memory."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def fill(path, s):
    if len(s.shape) > 1:  # kernels
      return jax.device_put(rng.standard_normal(s.shape, np.float32) / np.sqrt(s.shape[0]))
    return jax.device_put(np.full(s.shape, path[-1].key == "scale", s.dtype))  # biases 0, scales 1

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, jax.random.key(0), x))


def peak_bytes(since_reset: bool) -> int:
  """The peak RSS since ``reset_peak`` (VmHWM), or since the start where it was refused."""
  if since_reset:
    return rss_bytes("VmHWM")
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(layers: int, width: int, warm: bool) -> dict:
  """Runs in the fresh subprocess; returns the measurement."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from compressjax.export import size_report  # pylint: disable=g-import-not-at-top
  from compressjax.quant.granularity import PER_CHANNEL  # pylint: disable=g-import-not-at-top
  from compressjax.quant.lsq import LSQ  # pylint: disable=g-import-not-at-top

  class Stack(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
      for i in range(self.depth):
        x = nn.LayerNorm(name=f"norm{i}")(nn.Dense(width, name=f"dense{i}")(x))
      return x

  rules = [cj.Rule(pattern=".", weight=LSQ(bits=4, granularity=PER_CHANNEL),
                   act=LSQ(bits=8, kind="activation", signed=True))]
  x = jnp.ones((1, width), jnp.float32)

  def compressed(depth):
    model = Stack(depth)
    qmodel = cj.compress(model, rules)
    variables = cj.init_from(qmodel, loaded_float_variables(model, x), x)
    return qmodel, jax.block_until_ready(variables)

  if warm:  # compile the per-site export ops once on a one-layer stack of the same width
    jax.block_until_ready(cj.export(*compressed(1), x)[1])
  gc.collect()
  trim_heap()
  base = rss_bytes()
  resettable = reset_peak()
  qmodel, variables = compressed(layers)
  init_peak = peak_bytes(resettable)
  float_bytes = sum(l.nbytes for l in jax.tree.leaves(variables["params"]))
  gc.collect()
  trim_heap()
  with_params = rss_bytes()
  resettable = reset_peak()
  serving_model, serving_vars = cj.export(qmodel, variables, x)
  jax.block_until_ready(serving_vars)
  peak = peak_bytes(resettable)
  packed = size_report(serving_vars).total_bytes
  del serving_model
  return {"layers": layers, "width": width, "warm": warm, "float_param_bytes": float_bytes,
          "packed_bytes": packed, "rss_runtime_bytes": base, "rss_with_params_bytes": with_params,
          "peak_bytes": peak, "peak_reset": resettable,
          "init_peak_over_float": (init_peak - base) / float_bytes,
          "export_extra": (peak - with_params) / float_bytes,
          "peak_over_float": (peak - base) / float_bytes}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=13)
  parser.add_argument("--width", type=int, default=2048)
  parser.add_argument("--cold", action="store_true",
                      help="no warm-up export: the peak includes compiling export's ops")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--label", default="", help="name of this run in the JSON (e.g. 'before')")
  parser.add_argument("--out", default=os.path.join(RESULTS, "export_memory_cpu.json"))
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.layers, args.width, not args.cold)))
    return {}
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--layers",
                        str(args.layers), "--width", str(args.width)] + ["--cold"] * args.cold,
                       check=True, capture_output=True, text=True)
  label = args.label or ("cold" if args.cold else "warm")
  row = {"label": label, **json.loads(out.stdout.strip().splitlines()[-1]),
         "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
         "load_average": os.getloadavg()}
  mb = lambda b: f"{b / 2**20:.0f} MB"
  print(f"{args.layers} x {args.width}^2 Dense: float {mb(row['float_param_bytes'])}, packed "
        f"{mb(row['packed_bytes'])}; export adds {row['export_extra']:.2f}x float at peak, "
        f"peak over the runtime {row['peak_over_float']:.2f}x float (goal <= 1.3)")
  runs = []
  if os.path.exists(args.out):
    with open(args.out) as f:
      runs = [r for r in json.load(f)["runs"] if r.get("label") != label]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"goal": "peak_over_float <= 1.3", "runs": runs + [row]}, f, indent=2)
  print(f"saved {args.out}")
  return row


if __name__ == "__main__":
  main()
