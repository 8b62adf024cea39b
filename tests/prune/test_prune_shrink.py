import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax import prune
from compressjax.models import CNN, MobileNetV2, ResNet

X = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)

MODELS = {
    "cnn": CNN(widths=(4, 6), hidden=8, num_classes=3),
    "resnet20": ResNet(num_classes=3, stage_widths=(4, 8, 8), stem_width=4),
    "mobilenet_v2": MobileNetV2(num_classes=3, width_multiplier=0.25, small_input=True,
                                last_width=16),
}


def random_variables(model, seed=0):
  """Random params and running statistics (positive variances), without compiling init."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), X))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if path[-1].key == "var":
      return rng.uniform(0.5, 2.0, s.shape).astype(np.float32)
    return rng.normal(0.0, 0.5, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def count(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", list(MODELS))
def test_shrunk_model_matches_masked_model_with_fewer_params(name):
  model = MODELS[name]
  variables = random_variables(model)
  rng = np.random.default_rng(0)
  keep = {g.name: np.sort(rng.choice(g.size, max(1, g.size // 2), replace=False))
          for g in prune.channel_groups(model)}
  thin, thin_vars = prune.shrink(model, variables, keep)
  assert type(thin) is type(model)
  masked = prune.mask_channels(model, variables, keep)
  expected = jax.jit(model.apply)(masked, X)
  got = jax.jit(thin.apply)(thin_vars, X)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
  assert count(thin_vars) < count(variables)
  assert jax.tree.structure(thin_vars) == jax.tree.structure(
      jax.eval_shape(lambda: thin.init(jax.random.key(0), X)))
  # Pruning changed the function: the masked model differs from the original.
  assert not np.allclose(jax.jit(model.apply)(variables, X), expected)


def test_groups_skip_channels_tied_across_residual_adds():
  resnet = prune.channel_groups(MODELS["resnet20"])
  assert [g.name for g in resnet[:3]] == ["stage1/block0", "stage1/block1", "stage1/block2"]
  assert all(g.consumers == (g.name + "/conv2",) for g in resnet)
  mobile = prune.channel_groups(MODELS["mobilenet_v2"])
  assert "block0" not in {g.name for g in mobile}  # no expansion: hidden == stem width
  assert len(mobile) == 16


def test_resnet_widths_after_shrink():
  model = MODELS["resnet20"]
  keep = {"stage2/block1": [0, 3, 5]}
  thin, _ = prune.shrink(model, random_variables(model), keep)
  assert thin.block_widths == (4, 4, 4, 8, 3, 8, 8, 8, 8)
  assert thin.stage_widths == model.stage_widths


def test_zero_channels_and_bad_keeps_are_refused():
  model = MODELS["cnn"]
  variables = random_variables(model)
  with pytest.raises(ValueError, match=r"'conv1' would keep 0 of 6"):
    prune.shrink(model, variables, {"conv1": []})
  with pytest.raises(ValueError, match="at least 2"):
    prune.shrink(model, variables, {"conv1": [0]}, min_channels=2)
  with pytest.raises(ValueError, match="unknown channel groups"):
    prune.shrink(model, variables, {"conv9": [0]})
  with pytest.raises(ValueError, match=r"indices in \[0, 6\)"):
    prune.shrink(model, variables, {"conv1": [0, 6]})
  with pytest.raises(ValueError, match="repeats"):
    prune.shrink(model, variables, {"conv1": [1, 1]})
  with pytest.raises(TypeError, match="channel pruning supports"):
    prune.channel_groups(object())
