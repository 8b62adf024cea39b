"""Checks every zoo model shares: init, logits in train/eval mode, BatchNorm state, dropout,
standard Linen sites, the registry.

Variables are filled from a seeded numpy generator rather than ``model.init``'s initializers:
compiling dozens of random initializers costs XLA far more time than the checks themselves.
Real init is traced abstractly (``jax.eval_shape``) instead.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax import models

# Small configurations: (registry name, constructor kwargs, input shape).
CASES = [
    ("mlp", {"features": (16, 8)}, (2, 8, 8, 1)),
    ("cnn", {}, (2, 8, 8, 1)),
    ("resnet20", {"stage_widths": (4, 8, 8), "stem_width": 4}, (2, 16, 16, 3)),
    ("mobilenet_v2", {"width_multiplier": 0.25, "small_input": True}, (2, 16, 16, 3)),
    ("vit", {"hidden": 16, "depth": 1, "heads": 2, "mlp_dim": 32, "dropout_rate": 0.5},
     (2, 8, 8, 3)),
]
IDS = [c[0] for c in CASES]


def _materialize(abstract, seed=0):
  """Concrete variables for an abstract init: BatchNorm/LayerNorm identity, random kernels."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _build(name, kwargs, shape):
  model = models.get_model(name, num_classes=7, **kwargs)
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
  return model, x, jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_train_and_eval_logits(name, kwargs, shape):
  model, x, abstract = _build(name, kwargs, shape)
  has_bn = "batch_stats" in abstract
  assert has_bn == (name in ("cnn", "resnet20", "mobilenet_v2"))
  assert set(abstract) == ({"params", "batch_stats"} if has_bn else {"params"})

  @jax.jit
  def run(variables, x, key):
    eval_logits = model.apply(variables, x)
    train_logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": key})
    return eval_logits, train_logits, state

  variables = _materialize(abstract)
  eval_logits, train_logits, state = run(variables, x, jax.random.key(2))
  assert eval_logits.shape == train_logits.shape == (2, 7)
  assert eval_logits.dtype == jnp.float32
  assert np.all(np.isfinite(eval_logits)) and np.all(np.isfinite(train_logits))
  # Eval mode is deterministic whatever the dropout key.
  np.testing.assert_array_equal(eval_logits, run(variables, x, jax.random.key(3))[0])
  if has_bn:  # Training mode normalizes with batch statistics and updates the running ones.
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(state["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
  if has_bn or name == "vit":  # BatchNorm or dropout makes training mode differ.
    assert not np.allclose(train_logits, eval_logits, atol=1e-4)
  if name == "vit":  # Dropout draws from the "dropout" rng.
    assert not np.allclose(train_logits, run(variables, x, jax.random.key(3))[1])


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_only_standard_linen_sites(name, kwargs, shape):
  """Every kernel belongs to a standard Linen layer, so compression can intercept it."""
  model, x, abstract = _build(name, kwargs, shape)
  kinds = []

  def spy(next_fun, args, kw, context):
    out = next_fun(*args, **kw)
    if context.method_name == "__call__" and "kernel" in context.module.variables.get("params", {}):
      kinds.append(type(context.module))
    return out

  def init():
    with nn.intercept_methods(spy):
      return model.init(jax.random.key(0), x)

  jax.eval_shape(init)
  kernels = [p for p, _ in jax.tree_util.tree_leaves_with_path(abstract["params"])
             if p[-1].key == "kernel"]
  assert len(kinds) == len(kernels) > 0
  assert set(kinds) <= {nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum}


def test_real_init_runs():
  model = models.CNN(widths=(4, 8), hidden=8, num_classes=3)
  x = jnp.ones((2, 8, 8, 1))
  logits, variables = jax.jit(model.init_with_output)(jax.random.key(0), x)
  assert logits.shape == (2, 3)
  assert float(jnp.std(variables["params"]["conv1"]["kernel"])) > 0


def test_registry_builds_named_models_and_rejects_unknown():
  assert models.model_names() == ("mlp", "cnn", "resnet20", "mobilenet_v2", "vit")
  assert isinstance(models.get_model("resnet20", 100), models.ResNet)
  assert models.get_model("resnet20", 100).num_classes == 100
  assert models.get_model("cnn", 3, hidden=32) == models.CNN(hidden=32, num_classes=3)
  with pytest.raises(ValueError, match=r"'resnet18'.*mlp, cnn, resnet20, mobilenet_v2, vit"):
    models.get_model("resnet18", 10)
