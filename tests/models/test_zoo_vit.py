"""ViT: module paths (DenseGeneral and Einsum sites), input validation."""

import jax
import jax.numpy as jnp
import pytest
from flax.traverse_util import flatten_dict

from compressjax.models import ViT

SMALL = dict(num_classes=5, hidden=16, depth=2, heads=2, mlp_dim=24, patch_size=4)


def test_paths_and_shapes():
  model = ViT(**SMALL)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 8, 12, 3))))["params"]
  shapes = {"/".join(k): v.shape for k, v in flatten_dict(params).items()}
  assert shapes["patch_embed/kernel"] == (4, 4, 3, 16)
  assert shapes["cls_token"] == (1, 1, 16)
  assert shapes["pos_embedding"] == (1, 1 + 2 * 3, 16)
  for i in range(2):
    assert shapes[f"block{i}/attn/query/kernel"] == (16, 2, 8)
    assert shapes[f"block{i}/attn/out/kernel"] == (2, 8, 16)
    assert shapes[f"block{i}/mlp/fc1/kernel"] == (16, 24)
    assert shapes[f"block{i}/mlp/fc2/kernel"] == (24, 16)
    assert shapes[f"block{i}/ln1/scale"] == (16,)
  assert shapes["final_ln/scale"] == (16,)
  assert shapes["head/kernel"] == (16, 5)


def test_bad_inputs():
  with pytest.raises(ValueError, match="patch_size=4.*\\(2, 6, 8, 3\\)"):
    jax.eval_shape(ViT(**SMALL).init, jax.random.key(0), jnp.zeros((2, 6, 8, 3)))
  with pytest.raises(ValueError, match="hidden=16 must be divisible by heads=3"):
    jax.eval_shape(ViT(**{**SMALL, "heads": 3}).init, jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
