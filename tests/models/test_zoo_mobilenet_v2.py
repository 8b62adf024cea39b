"""MobileNetV2: paper parameter count, width rounding, hidden_widths, small inputs."""

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from compressjax.models import MobileNetV2, make_divisible


def _params(model, shape=(1, 32, 32, 3)):
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))["params"]
  return {"/".join(k): v.shape for k, v in flatten_dict(params).items()}


def _count(shapes):
  return sum(int(jnp.prod(jnp.array(s))) for s in shapes.values())


def test_imagenet_param_count_matches_reference():
  # 3,504,872 parameters: the count of torchvision's mobilenet_v2 (3.4M weights + BN).
  assert _count(_params(MobileNetV2(num_classes=1000), (1, 224, 224, 3))) == 3_504_872


@pytest.mark.parametrize("value,expected", [(32 * 0.35, 16), (16 * 0.35, 8), (24 * 0.5, 16),
                                            (320 * 0.75, 240), (96 * 1.4, 136)])
def test_make_divisible(value, expected):
  assert make_divisible(value) == expected


def test_module_paths_and_block_structure():
  model = MobileNetV2()
  specs = model.block_specs()
  assert len(specs) == 17
  shapes = _params(model)
  assert shapes["stem/conv/kernel"] == (3, 3, 3, 32)
  assert "block0/expand/conv/kernel" not in shapes  # expand ratio 1
  assert shapes["block0/depthwise/conv/kernel"] == (3, 3, 1, 32)
  assert shapes["block1/expand/conv/kernel"] == (1, 1, 16, 96)
  assert shapes["block1/depthwise/conv/kernel"] == (3, 3, 1, 96)
  assert shapes["block1/project/conv/kernel"] == (1, 1, 96, 24)
  assert shapes["block16/project/conv/kernel"] == (1, 1, 960, 320)
  assert shapes["last/conv/kernel"] == (1, 1, 320, 1280)
  assert shapes["head/kernel"] == (1280, 10)
  assert [s.residual for s in specs].count(True) == 10


def test_hidden_widths_shape_expand_depthwise_project():
  hidden = [32] + [8 * (i + 1) for i in range(16)]
  model = MobileNetV2(width_multiplier=0.5, stem_width=32, hidden_widths=hidden)
  shapes = _params(model)
  for i, spec in enumerate(model.block_specs()):
    h = hidden[i]
    assert shapes[f"block{i}/depthwise/conv/kernel"] == (3, 3, 1, h)
    assert shapes[f"block{i}/depthwise/bn/scale"] == (h,)
    assert shapes[f"block{i}/project/conv/kernel"] == (1, 1, h, spec.out_width)
    if i:
      assert shapes[f"block{i}/expand/conv/kernel"] == (1, 1, spec.in_width, h)


def test_bad_hidden_widths():
  with pytest.raises(ValueError, match=r"hidden_widths\[0\] = 16.*stem width"):
    MobileNetV2(hidden_widths=[16] * 17).block_specs()
  with pytest.raises(ValueError, match="hidden_widths has 3 entries"):
    MobileNetV2(hidden_widths=[32] * 3).block_specs()


@pytest.mark.parametrize("small_input,side", [(True, 4), (False, 1)])
def test_small_input_downsamples_8x(small_input, side):
  model = MobileNetV2(width_multiplier=0.25, small_input=small_input)
  x = jnp.zeros((1, 32, 32, 3))
  _, state = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), x, capture_intermediates=True))
  assert state["intermediates"]["last"]["__call__"][0].shape[1:3] == (side, side)
