"""Optimizers from config: schedules, and weight decay masked off biases and norm scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.train import OptimConfig, decay_mask, make_optimizer, make_schedule


def test_cosine_schedule_with_warmup():
  cfg = OptimConfig(lr=0.2, warmup_epochs=2.0, end_lr_factor=0.1)
  lr = make_schedule(cfg, total_steps=100, steps_per_epoch=5)  # 10 warmup steps
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(55), lr(100)],
                             [0.02, 0.11, 0.2, 0.11, 0.02], rtol=1e-5)
  assert all(lr(i) >= lr(i + 1) for i in range(10, 100))


def test_constant_schedule_without_warmup():
  lr = make_schedule(OptimConfig(lr=0.3, schedule="constant"), total_steps=10, steps_per_epoch=5)
  np.testing.assert_allclose([lr(0), lr(9)], [0.3, 0.3])


PARAMS = {"conv0": {"kernel": jnp.ones((3, 3, 1, 4))}, "bn0": {"scale": jnp.ones(4),
                                                               "bias": jnp.ones(4)},
          "head": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones(10)}}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_only_moves_kernels(name):
  mask = decay_mask(PARAMS)
  assert mask["conv0"]["kernel"] and mask["head"]["kernel"]
  assert not mask["head"]["bias"] and not mask["bn0"]["scale"] and not mask["bn0"]["bias"]
  cfg = OptimConfig(name=name, lr=0.1, weight_decay=0.5, momentum=0.0)
  optimizer = make_optimizer(cfg, total_steps=10, steps_per_epoch=10)
  zeros = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = jax.jit(optimizer.update)(zeros, optimizer.init(PARAMS), PARAMS)
  for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
    moved = bool(jnp.any(update != 0))
    assert moved == (path[-1].key == "kernel"), path
