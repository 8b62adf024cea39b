import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax import prune


def kernels(seed=0):
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {"a": {"kernel": normal(8, 16)}, "b": {"kernel": normal(3, 3, 16, 8)},
          "c": {"kernel": normal(24, 4)}}


def groups(mask, m):
  """(..., K, out) -> (-1, m): every group of m along the input axis."""
  x = np.moveaxis(np.asarray(mask), -2, -1)
  return x.reshape(-1, m)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8), (2, 2)])
def test_nm_pattern_holds_in_every_group(n, m):
  params = kernels()
  _, masks = prune.prune_once(prune.nm(n, m, skip_first_last=False), params)
  for path in params:
    g = groups(masks[path]["kernel"], m)
    assert np.all(g.sum(axis=1) == n)
    w = groups(np.abs(params[path]["kernel"]), m)
    kept = np.where(g, w, np.inf).min(axis=1)
    dropped = np.where(g, -np.inf, w).max(axis=1)
    assert np.all(kept >= dropped)  # the n largest of each group survive


def test_nm_survives_training_and_round_trips_through_compression():
  params = kernels()
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), prune.nm(2, 4, skip_first_last=False))
  state = tx.init(params)

  rng = np.random.default_rng(0)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(10):
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    params, state = step(params, state, grads)
  masks = prune.get_masks(state)
  for path in params:
    w, mask = params[path]["kernel"], masks[path]["kernel"]
    assert np.all(groups(w != 0, 4).sum(axis=1) == 2)
    packed = prune.compress_nm(w, 2, 4, mask)
    assert packed.indices.dtype == jnp.uint8 and packed.values.size == w.size // 2
    np.testing.assert_array_equal(prune.decompress_nm(packed), w)
    # 2 bits of index per kept value: 16 bits + 2 bits per 2 kept vs 4 * 32 dense bits.
    assert packed.nbytes == w.size // 2 * 4 + w.size // 2 * 2 // 8
    assert packed.nbytes / packed.dense_nbytes == pytest.approx((2 * 32 + 2 * 2) / (4 * 32))


def test_compress_without_mask_keeps_the_largest():
  w = jnp.array([[1.0, -5.0], [-3.0, 0.5], [2.0, 4.0], [0.1, 1.0]])  # (K=4, out=2)
  packed = prune.compress_nm(w, 2, 4)
  np.testing.assert_array_equal(prune.decompress_nm(packed),
                                [[0.0, -5.0], [-3.0, 0.0], [2.0, 4.0], [0.0, 0.0]])
  assert packed.values.shape == (2, 2)


@pytest.mark.parametrize("n, m, shape, msg", [
    (3, 2, (8, 4), "1 <= N <= M"),
    (0, 4, (8, 4), "1 <= N <= M"),
    (2, 4, (6, 4), "M=4 must divide the input axis"),
])
def test_bad_nm_is_refused(n, m, shape, msg):
  with pytest.raises(ValueError, match=msg):
    prune.compress_nm(jnp.ones(shape), n, m)


def test_nm_pruner_names_the_layer_the_pattern_does_not_fit():
  with pytest.raises(ValueError, match="a/kernel: M=16"):
    prune.nm(2, 16, skip_first_last=False).init(kernels())
  with pytest.raises(ValueError, match="1 <= N <= M"):
    prune.nm(5, 4)


def test_compress_refuses_a_mask_that_is_not_nm():
  with pytest.raises(ValueError, match="exactly 2 of every 4"):
    prune.compress_nm(jnp.ones((8, 2)), 2, 4, jnp.ones((8, 2), bool))
