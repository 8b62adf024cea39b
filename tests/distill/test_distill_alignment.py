import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.distill.alignment import cka, ka_loss, kernel_alignment
from compressjax.distill.attention import attention_map, attention_transfer
from compressjax.distill.feature import adapt, feature_mse, init_adaptor

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 4, 4, 5)).astype(np.float32)
Y = RNG.normal(size=(6, 4, 4, 3)).astype(np.float32)


def test_ka_matches_numpy_formula():
  x, y = X.reshape(6, -1), Y.reshape(6, -1)
  gx, gy = x @ x.T, y @ y.T
  expected = np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy))
  np.testing.assert_allclose(kernel_alignment(X, Y), expected, rtol=1e-5)


def test_ka_self_is_one_and_invariant_to_scale_and_channel_count():
  np.testing.assert_allclose(kernel_alignment(X, X), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kernel_alignment(X, 37.0 * X), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kernel_alignment(1e-3 * X, Y), kernel_alignment(X, Y), rtol=1e-5)
  # 5 vs 10 channels: duplicated (or orthogonally mixed) channels give the same Gram matrix
  wide = np.concatenate([X, X], axis=-1) / np.sqrt(2)
  np.testing.assert_allclose(kernel_alignment(X, wide), 1.0, rtol=1e-6)
  q, _ = np.linalg.qr(RNG.normal(size=(5, 5)))
  np.testing.assert_allclose(kernel_alignment(X, X @ q.astype(np.float32)), 1.0, rtol=1e-5)
  assert 0.0 < float(kernel_alignment(X, Y)) < 1.0


def test_cka_properties():
  x, y = X.reshape(6, -1), Y.reshape(6, -1)
  h = np.eye(6) - 1.0 / 6
  gx, gy = h @ x @ x.T @ h, h @ y @ y.T @ h
  expected = np.sum(gx * gy) / (np.linalg.norm(gx) * np.linalg.norm(gy))
  np.testing.assert_allclose(cka(X, Y), expected, rtol=1e-4)
  np.testing.assert_allclose(cka(X, X), 1.0, rtol=1e-6)
  np.testing.assert_allclose(cka(X, 5.0 * X + 3.0), 1.0, rtol=1e-5)  # scale and shift
  np.testing.assert_allclose(cka(X, Y), cka(Y, X), rtol=1e-6)
  # KA, uncentred, is not invariant to a shift; CKA is
  assert float(kernel_alignment(X, X + 3.0)) < 0.99


def test_ka_loss_sums_layers_and_stops_teacher_gradient():
  loss = ka_loss([X, X], [X, Y])
  np.testing.assert_allclose(loss, -(1.0 + kernel_alignment(X, Y)), rtol=1e-5)
  g = jax.grad(lambda t: ka_loss([jnp.asarray(X)], [t]))(jnp.asarray(Y))
  np.testing.assert_array_equal(g, 0.0)
  g_s = jax.grad(lambda s: ka_loss([s], [jnp.asarray(Y)]))(jnp.asarray(X))
  assert np.all(np.isfinite(g_s)) and np.abs(g_s).sum() > 0


def test_mismatched_batches_are_refused():
  with pytest.raises(ValueError, match="batch size"):
    kernel_alignment(X, Y[:5])
  with pytest.raises(ValueError, match="batch size"):
    cka(X[:3], Y)
  with pytest.raises(ValueError, match="at least 2"):
    kernel_alignment(X[:1], Y[:1])
  with pytest.raises(ValueError, match="pairwise"):
    ka_loss([X, X], [Y])


def test_feature_mse_with_adaptor():
  a = init_adaptor(jax.random.key(0), 3, 5)
  assert a["kernel"].shape == (3, 5) and a["bias"].shape == (5,)
  np.testing.assert_allclose(adapt(a, Y), Y @ np.asarray(a["kernel"]), rtol=1e-5, atol=1e-6)
  identity = {"kernel": jnp.eye(5), "bias": jnp.zeros(5)}
  assert float(feature_mse(X, X, identity)) == pytest.approx(0.0)
  np.testing.assert_allclose(feature_mse(X, X + 1.0), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="adaptor"):
    feature_mse(Y, X)
  with pytest.raises(ValueError, match="input channels"):
    adapt(a, X)


def test_attention_transfer():
  a = attention_map(X)
  assert a.shape == (6, 16)
  np.testing.assert_allclose(np.linalg.norm(a, axis=-1), 1.0, rtol=1e-5)
  assert float(attention_transfer(X, 2.0 * X)) == pytest.approx(0.0, abs=1e-9)
  assert float(attention_transfer(X, Y)) > 0.0
  with pytest.raises(ValueError, match="spatial"):
    attention_transfer(X, Y[:, :2])
