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


def _fake_quant_closed_form(v, s, lo, hi, ct):
  """(d/dv, d/ds) of sum(ct * fake_quant(v, s, lo, hi)), with ``s`` broadcast against ``v``."""
  u = v / s
  inside = (u > lo) & (u < hi)
  ds = ct * np.where(inside, np.round(u) - u, np.where(u <= lo, lo, hi))
  axes = tuple(i for i, n in enumerate(np.shape(s)) if n == 1 and v.shape[i] != 1)
  return ct * inside, ds.sum(axes, keepdims=True)


def test_fake_quant_gradients_per_group_with_calibrated_bounds_and_under_vmap():
  rng = np.random.default_rng(0)
  v = (rng.standard_normal((2, 4, 8, 3)) * 3).astype(np.float32)  # (stack, groups, K, N)
  ct = rng.standard_normal(v.shape).astype(np.float32)
  s = rng.uniform(0.2, 0.6, (2, 4, 1, 3)).astype(np.float32)
  lo, hi = jnp.float32(-4.0), jnp.float32(3.0)  # calibrated bounds are arrays

  def loss(v, s, ct):
    return (ste.fake_quant(v, s, lo, hi) * ct).sum()

  gv, gs = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(v, s, ct)
  for i in range(2):
    ev, es = _fake_quant_closed_form(v[i], s[i], -4.0, 3.0, ct[i])
    np.testing.assert_array_equal(gv[i], ev)
    np.testing.assert_allclose(gs[i], es, rtol=1e-5, atol=1e-5)
  u = v / s
  assert ((u <= -4) | (u >= 3)).any() and ((u > -4) & (u < 3)).any()  # both branches are hit
  np.testing.assert_array_equal(ste.fake_quant(v, s, -4, 3),
                                np.clip(np.round(v / s), -4, 3) * s)


def _equations(jaxpr):
  """Every equation of ``jaxpr``, those of the calls inside it included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)  # a closed jaxpr's jaxpr, or a jaxpr
      if hasattr(inner, "eqns"):
        yield from _equations(inner)


def test_fake_quant_step_gradient_is_one_two_term_reduction_over_the_inputs():
  """The backward pass keeps only the inputs and sums both terms of d/dstep in one reduction
  (what lets XLA:CPU fuse the step gradient into one loop)."""
  v, s = jnp.ones((16, 8)), jnp.ones((1, 8))
  backward = lambda v, s, ct: jax.vjp(lambda v, s: ste.fake_quant(v, s, -8, 7), v, s)[1](ct)
  reductions = [e for e in _equations(jax.make_jaxpr(backward)(v, s, v).jaxpr)
                if e.primitive.name.startswith("reduce")]
  assert [(e.primitive.name, len(e.outvars)) for e in reductions] == [("reduce", 2)]
