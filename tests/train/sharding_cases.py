"""The models, data and settings of the sharding tests, shared by the test module (1 device)
and tests/train/sharding_worker.py (8 forced devices, or 2 processes)."""

import warnings

import jax
import numpy as np
import optax

from compressjax import prune
from compressjax.core import Rule, compress
from compressjax.models import CNN
from compressjax.quant.granularity import PER_CHANNEL
from compressjax.quant.lsq import LSQ
from compressjax.quant.uniform import Uniform
from compressjax.train import ArraySplit, MeshConfig, TrainConfig, create_train_state
from compressjax.train.mesh import make_mesh
from compressjax.train.sharding import state_shardings

FSDP_MIN_SIZE = 64
MESHES = {"1": MeshConfig(data=1), "8x1": MeshConfig(data=8),
          "4x2": MeshConfig(data=4, fsdp=2, fsdp_min_size=FSDP_MIN_SIZE)}
CFG = TrainConfig(steps=5, batch_size=16, seed=0, log_every_steps=1, eval_every_epochs=None,
                  checkpoint_every_steps=5, progress=False)


def data(n, seed):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, n).astype(np.int32)
  x = (rng.normal(size=(n, 8, 8, 1)) + 0.3 * y[:, None, None, None]).astype(np.float32)
  return ArraySplit(x, y)


TRAIN, TEST = data(64, 0), data(20, 1)  # 20 test images: padded and split over 8 devices


def models():
  """The float CNN, and the same CNN compressed: every kernel LSQ 4-bit per channel and 50%
  magnitude-pruned (masks in the optimizer state), the head's input LSQ 4-bit.

  Activation quantizers stay on the head only: rounding a whole feature map amplifies the
  last-bit differences of sharded reductions (BatchNorm statistics, gradient all-reduce) into
  flipped codes, so curves would part for reasons that are not the sharding's fault.
  """
  cnn = CNN(widths=(8, 16), hidden=32)
  weight = LSQ(bits=4, kind="weight", granularity=PER_CHANNEL)
  rules = [Rule(pattern="^head$", weight=weight,
                act=LSQ(bits=4, kind="activation", signed=False)),
           Rule(pattern=".", weight=weight)]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the pruner's note on first/last layers
    pruned = optax.chain(optax.sgd(0.05, momentum=0.9), prune.magnitude(0.5))
  return {"float": (cnn, optax.sgd(0.05, momentum=0.9)),
          "compressed": (compress(cnn, rules), pruned)}


def init_state(model, tx, mesh_cfg=None):
  """The start state; with a mesh, created sharded (as ``setup`` does: global arrays)."""
  init = lambda: create_train_state(model, tx, TRAIN.x[:16], jax.random.PRNGKey(0))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if mesh_cfg is None:
      return init()
    shardings = state_shardings(jax.eval_shape(init), make_mesh(mesh_cfg), FSDP_MIN_SIZE)
    return jax.jit(init, out_shardings=shardings)()


def calibrated_model():
  """The CNN with per-channel min/max-calibrated weights: statistics in "quant_stats"."""
  weight = Uniform(bits=4, granularity=PER_CHANNEL, calibration="minmax", dynamic=False)
  return compress(CNN(widths=(8, 16), hidden=32), [Rule(pattern=".", weight=weight)])
