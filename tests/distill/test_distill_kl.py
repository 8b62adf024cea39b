import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.distill.kl import cross_entropy, hinton_loss, soft_kl


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_soft_kl_matches_hand_computation():
  zs = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  zt = np.array([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
  t = 4.0
  ps, pt = _softmax(zs / t), _softmax(zt / t)
  expected = t**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  np.testing.assert_allclose(soft_kl(zs, zt, t), expected, rtol=1e-5)
  # a single example by hand: T = 1, student uniform over 2 classes, teacher (e/(1+e), 1/(1+e))
  p = np.e / (1 + np.e)
  by_hand = p * np.log(p / 0.5) + (1 - p) * np.log((1 - p) / 0.5)
  np.testing.assert_allclose(soft_kl(np.zeros((1, 2)), np.array([[1.0, 0.0]]), 1.0), by_hand,
                             rtol=1e-5)


def test_soft_kl_zero_for_equal_logits_and_teacher_gets_no_gradient():
  z = jnp.array([[0.3, -1.0, 2.0]])
  assert float(soft_kl(z, z)) == pytest.approx(0.0, abs=1e-6)
  g_teacher = jax.grad(lambda t: soft_kl(z + 1.0, t))(z)
  np.testing.assert_array_equal(g_teacher, 0.0)


def test_top_k_restricts_to_teacher_top_classes():
  zt = jnp.array([[5.0, 4.0, -3.0, -9.0]])
  zs = jnp.array([[1.0, 1.0, 7.0, 2.0]])
  # the student's mass on classes 2 and 3 is ignored: only classes 0, 1 count, where it is uniform
  expected = soft_kl(zs[:, :2], zt[:, :2], 2.0)
  np.testing.assert_allclose(soft_kl(zs, zt, 2.0, top_k=2), expected, rtol=1e-6)
  with pytest.raises(ValueError, match="top_k"):
    soft_kl(zs, zt, top_k=5)


def test_hinton_mix_and_label_mask():
  zs = jnp.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]])
  zt = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
  y = jnp.array([0, 1])
  expected = 0.1 * cross_entropy(zs, y) + 0.9 * soft_kl(zs, zt, 4.0)
  np.testing.assert_allclose(hinton_loss(zs, zt, y), expected, rtol=1e-6)
  mask = jnp.array([1.0, 0.0])
  np.testing.assert_allclose(cross_entropy(zs, y, mask), cross_entropy(zs[:1], y[:1]), rtol=1e-6)
  onehot = jax.nn.one_hot(y, 3)
  np.testing.assert_allclose(cross_entropy(zs, onehot), cross_entropy(zs, y), rtol=1e-6)


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match="same shape"):
    soft_kl(jnp.zeros((2, 3)), jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="temperature"):
    soft_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.0)
  with pytest.raises(ValueError, match="alpha"):
    hinton_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), alpha=1.5)
  with pytest.raises(ValueError, match="labels"):
    cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.float32))
