"""Straight-through estimators: exact forward values, identity/masked gradients."""

import jax
import jax.numpy as jnp
import numpy as np

from compressjax.quant import ste

X = jnp.array([-2.5, -1.5, -0.4, 0.0, 0.4, 1.5, 2.5, 1e8])


def test_round_floor_sign_forward_exact_and_identity_gradient():
  np.testing.assert_array_equal(ste.round_ste(X), jnp.round(X))
  np.testing.assert_array_equal(ste.floor_ste(X), jnp.floor(X))
  np.testing.assert_array_equal(ste.sign_ste(X), [-1, -1, -1, 1, 1, 1, 1, 1])
  for f in (ste.round_ste, ste.floor_ste, ste.sign_ste):
    np.testing.assert_array_equal(jax.grad(lambda x: f(x).sum())(X), np.ones(X.shape))


def test_clip_masks_gradient_outside_and_gives_bounds_their_share():
  x = jnp.array([-2.0, -1.0, 0.0, 1.0, 3.0])
  np.testing.assert_array_equal(ste.clip(x, -1.0, 1.0), [-1, -1, 0, 1, 1])
  gx, glo, ghi = jax.grad(lambda x, lo, hi: ste.clip(x, lo, hi).sum(), argnums=(0, 1, 2))(
      x, -1.0, 1.0
  )
  np.testing.assert_array_equal(gx, [0, 0, 1, 0, 0])  # one-sided at both bounds
  assert float(glo) == 2.0 and float(ghi) == 2.0


def test_grad_scale_keeps_value_and_scales_gradient():
  s = jnp.float32(0.37)
  assert float(ste.grad_scale(s, 0.25)) == float(s)
  assert float(jax.grad(lambda s: 3.0 * ste.grad_scale(s, 0.25))(s)) == 0.75
