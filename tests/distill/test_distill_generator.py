import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.distill.hinge import hinge_d_loss, hinge_g_loss
from compressjax.distill.pix2pix import pix2pix_init
from compressjax.distill.taps import apply_with_taps, taps
from compressjax.models.discriminator import PatchDiscriminator
from compressjax.models.generator import Generator, uniform_generator

X = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))


def test_generator_shapes_widths_and_block_taps():
  g = uniform_generator(ngf=4, n_blocks=2, branch_width=6, branches=(("conv", 3), ("dw", 5)))
  assert g.down_widths == (4, 8, 16) and g.up_widths == (8, 4)
  v = pix2pix_init(g, 1, X)
  y, feats, upd = jax.jit(lambda v, x: apply_with_taps(
      g, v, x, paths=g.block_paths, mutable=["batch_stats"], train=True))(v, X)
  assert y.shape == (2, 16, 16, 3) and float(jnp.max(jnp.abs(y))) <= 1.0
  assert v["params"]["block_0"]["branch_1"]["dwconv"]["kernel"].shape == (5, 5, 1, 6)
  assert v["params"]["block_0"]["branch_0"]["conv1"]["kernel"].shape == (3, 3, 16, 6)
  assert set(feats) == {"block_0", "block_1"} and feats["block_1"].shape == (2, 4, 4, 16)
  # training mode updates BatchNorm statistics; instance norm has none
  assert not np.allclose(upd["batch_stats"]["down_0_norm"]["mean"], 0.0)
  gi = g.clone(norm="instance")
  assert "batch_stats" not in jax.eval_shape(gi.init, jax.random.key(1), X)


def test_zero_width_branch_is_absent_and_empty_block_is_identity():
  g = Generator(down_widths=(4, 8), block_widths=((0, 3), (0, 0)), up_widths=(4,),
                branches=(("conv", 1), ("dw", 3)))
  v = pix2pix_init(g, 1, X)
  assert set(v["params"]["block_0"]) == {"branch_1", "norm"}
  assert "block_1" not in v["params"]
  f = jax.jit(lambda v, x: taps(g, v, x, ["block_0", "block_1"]))(v, X)
  np.testing.assert_array_equal(f["block_1"], f["block_0"])


def test_bad_generator_configs_are_refused():
  with pytest.raises(ValueError, match="up_widths"):
    Generator(down_widths=(4, 8), up_widths=(4, 4))
  with pytest.raises(ValueError, match=r"block_widths\[0\]"):
    Generator(down_widths=(4, 8), block_widths=((1, 2),), up_widths=(4,))
  with pytest.raises(ValueError, match="branches"):
    Generator(branches=(("conv", 2),) * 6)
  with pytest.raises(ValueError, match="norm"):
    Generator(norm="group")
  g = uniform_generator(ngf=4, n_blocks=1, branch_width=2)
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(g.init, jax.random.key(0), jnp.ones((1, 18, 18, 1)))


def test_patch_discriminator_and_hinge_losses():
  d = PatchDiscriminator(ndf=4, n_layers=2)
  y = jnp.zeros((2, 16, 16, 3))
  v = pix2pix_init(d, 0, X, y)
  assert jax.jit(d.apply)(v, X, y).shape == (2, 2, 2, 1)  # 16 -> 8 -> 4 -> 3 -> 2 patches
  real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
  assert float(hinge_d_loss(real, fake)) == pytest.approx((0 + 0.5) / 2 + (0 + 1.0) / 2)
  assert float(hinge_g_loss(fake)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="share"):
    d.apply(v, X, y[:, :8])
