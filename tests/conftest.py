"""Shared test fixtures: small deterministic models and a toy quantizer; the longest files first.

The tests compile many hundreds of small XLA programs and run each a few times on tiny shapes, so
their CPU time is mostly LLVM code generation: ``TEST_XLA_FLAGS`` compiles at LLVM -O0 (about
22% less CPU for the demo story and the LM quick runs, measured side by side). XLA's own HLO
passes (fusion, layouts, algebraic rewrites) are unchanged, so served-vs-fake-quant and
sharded-vs-single comparisons see the programs users get. Set before JAX starts its backend;
kernels of the notebook tests and the sharding subprocesses inherit it.
"""

import dataclasses
import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant.base import Quantizer
from compressjax.qarray import QArray

# Files that take a minute or more (module fixtures: the demo story, the LM quick runs, the
# sharding subprocesses; the notebooks). `make test` runs files whole on two workers
# (--dist loadfile), in collection order: starting with these, the workers end together.
LONGEST_FILES = ("test_lm_experiments.py", "test_notebooks.py", "test_pipeline.py",
                 "test_train_sharding.py")


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: order kept otherwise


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyQuantizer(Quantizer):
  """Symmetric per-tensor quantizer with a learnable step and a call counter in stats."""

  def init(self, x):
    return {"step": jnp.max(jnp.abs(x)) / (2 ** (self.bits - 1) - 1) + 1e-8}, {"calls": jnp.zeros(())}

  def update(self, x, params, stats):
    return {"calls": stats["calls"] + 1}

  def _codes(self, x, step):
    lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
    return jnp.clip(jnp.round(x / step), lo, hi)

  def fake(self, x, params, stats):
    step = params["step"]
    scaled = x / step
    rounded = scaled + jax.lax.stop_gradient(self._codes(x, step) - scaled)
    return rounded * step

  def export(self, x, params, stats):
    return QArray.from_codes(self._codes(x, params["step"]), params["step"], bits=self.bits, signed=True)


class ToyNet(nn.Module):
  """Conv, BatchNorm, DenseGeneral, Einsum, ConvTranspose and Dense sites in one small net."""

  width: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (3, 3), name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.relu(x)
    x = nn.ConvTranspose(self.width, (2, 2), strides=(1, 1), name="deconv")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.DenseGeneral(8, name="proj")(x)
    x = nn.Einsum((8, 8), "bi,io->bo", name="mix")(x)
    return nn.Dense(3, name="head")(x)


@pytest.fixture
def toy_quantizer():
  return ToyQuantizer


@pytest.fixture
def toy_net():
  return ToyNet()


@pytest.fixture
def toy_input():
  return jax.random.normal(jax.random.key(1), (2, 5, 5, 1))


@pytest.fixture
def assert_same_export():
  """``f(a, b)``: two exports' served trees hold equal codes (integer leaves) and scales / zero
  points to an ulp (float leaves: a compiled conversion may divide differently from op by op)."""
  def same(a, b):
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
      if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        np.testing.assert_allclose(x, y, rtol=1e-6)
      else:
        np.testing.assert_array_equal(x, y)
  return same

