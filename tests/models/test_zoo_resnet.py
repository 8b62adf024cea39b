"""CIFAR ResNet: parameter count, module paths, block_widths, depth presets."""

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from compressjax.models import ResNet, resnet, resnet20

X = jnp.zeros((2, 32, 32, 3))


def _params(model, x=X):
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
  return {"/".join(k): v.shape for k, v in flatten_dict(params).items()}


def test_resnet20_param_count_and_paths():
  shapes = _params(resnet20())
  total = sum(int(jnp.prod(jnp.array(s))) for s in shapes.values())
  # 0.27M as in He et al. (with 1x1 projection shortcuts and BatchNorm scale/bias).
  assert total == 272_474
  convs = {k.rsplit("/", 1)[0] for k in shapes if k.endswith("kernel")}
  assert len(convs) == 1 + 18 + 2 + 1  # stem, 9 blocks x 2 convs, 2 shortcuts, head
  assert {"stem/conv", "stage1/block0/conv1", "stage1/block0/conv2", "stage3/block2/conv2",
          "stage2/block0/shortcut/conv", "stage3/block0/shortcut/conv", "head"} <= convs
  assert "stage1/block0/shortcut/conv" not in convs
  assert shapes["stage2/block0/bn1/scale"] == (32,)
  assert shapes["stage2/block0/shortcut/bn/scale"] == (32,)
  assert shapes["head/kernel"] == (64, 10)


def test_block_widths_change_inner_convs_only():
  widths = (3, 16, 5, 7, 32, 9, 11, 64, 13)
  shapes = _params(ResNet(block_widths=widths))
  reference = _params(ResNet())
  for i, w in enumerate(widths):
    stage, block = f"stage{i // 3 + 1}", f"block{i % 3}"
    in_width = shapes[f"{stage}/{block}/conv1/kernel"][2]
    assert shapes[f"{stage}/{block}/conv1/kernel"] == (3, 3, in_width, w)
    assert shapes[f"{stage}/{block}/bn1/scale"] == (w,)
    out_width = reference[f"{stage}/{block}/conv2/kernel"][3]
    assert shapes[f"{stage}/{block}/conv2/kernel"] == (3, 3, w, out_width)
  untouched = [k for k in reference if "conv1" not in k and "bn1" not in k and "conv2" not in k]
  assert all(shapes[k] == reference[k] for k in untouched)


def test_stem_width_adds_projection_and_output_runs():
  model = ResNet(num_classes=4, stem_width=8, stage_widths=(16, 32), blocks_per_stage=1)
  shapes = _params(model, jnp.zeros((2, 8, 8, 3)))
  assert shapes["stage1/block0/shortcut/conv/kernel"] == (1, 1, 8, 16)
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), jnp.ones((2, 8, 8, 3)))[0]
  assert out.shape == (2, 4)


def test_depth_presets_and_errors():
  assert resnet(32).blocks_per_stage == 5
  assert resnet20(num_classes=100) == ResNet(num_classes=100, blocks_per_stage=3)
  with pytest.raises(ValueError, match="6n\\+2.*21"):
    resnet(21)
  with pytest.raises(TypeError, match="fixes blocks_per_stage"):
    resnet20(blocks_per_stage=2)
  with pytest.raises(ValueError, match="block_widths has 2 entries"):
    _params(ResNet(block_widths=(8, 8)))
  with pytest.raises(ValueError, match="positive ints"):
    _params(ResNet(block_widths=(8,) * 8 + (0,)))
