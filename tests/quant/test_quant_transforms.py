"""``fake`` under jit, grad and vmap, for every quantizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant import (
    LSQ,
    PACT,
    PER_CHANNEL,
    SAT,
    DoReFa,
    FixedPoint,
    LSQPlus,
    Uniform,
    per_group,
)

# A batch of 4 (8, 4) tensors (the shape the property tests use too, so eager ops are cached).
X = np.random.default_rng(0).standard_normal((4, 8, 4)).astype(np.float32)

QUANTIZERS = [
    Uniform(bits=4, granularity=per_group(4)),
    Uniform(bits=8, symmetric=False, dynamic=False),
    DoReFa(bits=1),
    DoReFa(bits=3, granularity=PER_CHANNEL),
    DoReFa(bits=2, kind="activation"),
    PACT(bits=3, alpha_init=2.0),
    LSQ(bits=3, granularity=PER_CHANNEL),
    LSQPlus(bits=4),
    SAT(bits=4),
    SAT(bits=4, kind="activation", alpha_init=2.0),
    FixedPoint(granularity=PER_CHANNEL),
    FixedPoint(kind="activation", signed=False),
]


@pytest.mark.parametrize("q", QUANTIZERS, ids=lambda q: f"{type(q).__name__}{q.bits}")
def test_fake_under_jit_grad_and_vmap(q):
  params, stats = q.init(X[0])
  stats = q.update(X[0], params, stats)
  fake = jax.jit(q.fake)
  y = fake(X[0], params, stats)
  np.testing.assert_allclose(y, q.fake(X[0], params, stats), rtol=1e-6, atol=1e-6)
  # vmap over a batch of tensors, parameters shared: the same as one call per tensor.
  yb = jax.vmap(fake, in_axes=(0, None, None))(X, params, stats)
  for i in range(X.shape[0]):
    np.testing.assert_allclose(yb[i], fake(X[i], params, stats), rtol=1e-6, atol=1e-6)
  # grad w.r.t. the input and the learnable parameters: finite, and the input gets a signal.
  loss = lambda x, p: jnp.sum(q.fake(x, p, stats) * jnp.cos(x))
  gx, gp = jax.jit(jax.grad(loss, argnums=(0, 1)))(X[0], params)
  assert gx.shape == X[0].shape and np.isfinite(gx).all() and np.abs(gx).sum() > 0
  for name, g in gp.items():
    assert g.shape == params[name].shape and np.isfinite(g).all(), name
