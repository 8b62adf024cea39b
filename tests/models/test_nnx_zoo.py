"""The NNX twins compute their Linen models' function, and compress, train and serve as NNX."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import compressjax as cj
from compressjax.core import Rule, discover
from compressjax.models import CNN, ResNet, ViT, nnx_zoo
from compressjax.qarray import QArray
from compressjax.quant import LSQ, PER_CHANNEL

VIT = dict(hidden=16, depth=2, heads=2, mlp_dim=32)
TWINS = {
    "cnn": (lambda: CNN(widths=(4, 8), hidden=16),
            lambda: nnx_zoo.CNN(widths=(4, 8), hidden=16, rngs=nnx.Rngs(0)), (8, 8, 1)),
    "resnet": (lambda: ResNet(stage_widths=(4, 8), blocks_per_stage=1, stem_width=4),
               lambda: nnx_zoo.ResNet(stage_widths=(4, 8), blocks_per_stage=1, stem_width=4,
                                      rngs=nnx.Rngs(0)), (8, 8, 3)),
    "vit": (lambda: ViT(**VIT), lambda: nnx_zoo.ViT(**VIT, rngs=nnx.Rngs(0)), (8, 8, 1)),
}
RULES = [Rule(pattern=".", weight=LSQ(bits=4, granularity=PER_CHANNEL),
              act=LSQ(bits=8, kind="activation", signed=True))]


def _twins(name):
  make_linen, make_nnx, shape = TWINS[name]
  x = jax.random.normal(jax.random.key(1), (3, *shape))
  linen = make_linen()
  variables = linen.init(jax.random.key(0), x)
  twin = nnx_zoo.load_linen(make_nnx(), variables)
  twin.eval()
  return linen, variables, twin, x


@pytest.mark.parametrize("name", sorted(TWINS))
def test_twin_computes_the_linen_function(name):
  linen, variables, twin, x = _twins(name)
  np.testing.assert_allclose(twin(x), linen.apply(variables, x), atol=1e-5, rtol=1e-5)


def test_vit_twin_has_the_linen_sites_and_serves_as_fake_quant():
  linen, variables, twin, x = _twins("vit")
  linen_sites = [s.name for s in discover(linen, x, train=False)]
  assert [s.name for s in discover(twin, x)] == linen_sites
  assert "block0/attn/query/kernel" in linen_sites and "block1/mlp/fc2/kernel" in linen_sites
  cm = cj.compress(twin, RULES, x)
  cm.eval()
  fake = cm(x)
  served = cj.export(cm)
  np.testing.assert_allclose(served(x), fake, atol=1e-5, rtol=1e-5)
  kernels = {name: functools.reduce(lambda t, k: t[k], name.split("/"), served.served)["weight"].get_value() for name in linen_sites
             if "dot_general" not in name}  # attention's products: not matched without rhs=
  # every weight the catch-all matches is exported as a QArray
  assert all(isinstance(q, QArray) for q in kernels.values()), kernels
  # per output feature of the op: DenseGeneral's (in, heads, head_dim) gets heads * head_dim
  query = kernels["block0/attn/query/kernel"]
  assert query.scale.size == VIT["hidden"]


def test_vit_twin_rejects_a_bad_patch_size():
  with pytest.raises(ValueError, match="image_size=8 must be divisible by patch_size=3"):
    nnx_zoo.ViT(patch_size=3, rngs=nnx.Rngs(0))
