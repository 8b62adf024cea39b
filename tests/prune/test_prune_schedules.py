import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax import prune


def test_polynomial_formula_at_several_steps():
  sched = prune.polynomial(begin_step=100, end_step=300, frequency=50, initial_sparsity=0.1)
  s_f, s_i = 0.9, 0.1
  for t in (0, 100, 150, 200, 250, 300, 1000):
    p = min(max((t - 100) / 200, 0.0), 1.0)
    expected = s_f + (s_i - s_f) * (1 - p) ** 3
    np.testing.assert_allclose(float(sched.sparsity(jnp.int32(t), s_f)), expected, rtol=1e-6)
  assert float(sched.sparsity(jnp.int32(200), 0.8)) == pytest.approx(0.8 + (0.1 - 0.8) / 8)


def test_polynomial_update_steps_every_frequency_and_at_end():
  sched = prune.polynomial(10, 45, frequency=10)
  steps = [t for t in range(60) if bool(sched.is_update(jnp.int32(t)))]
  assert steps == [10, 20, 30, 40, 45]


def test_one_shot_under_jit():
  sched = prune.one_shot(5)
  f = jax.jit(lambda t: (sched.sparsity(t, 0.7), sched.is_update(t)))
  assert [bool(f(t)[1]) for t in range(8)] == [t == 5 for t in range(8)]
  assert float(f(4)[0]) == 0.0 and float(f(9)[0]) == pytest.approx(0.7)


@pytest.mark.parametrize("kwargs, msg", [
    (dict(begin_step=10, end_step=10), "begin_step < end_step"),
    (dict(begin_step=0, end_step=10, frequency=0), "frequency"),
    (dict(begin_step=0, end_step=10, initial_sparsity=1.0), "initial_sparsity"),
])
def test_polynomial_rejects_bad_arguments(kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    prune.polynomial(**kwargs)


def test_one_shot_rejects_negative_step():
  with pytest.raises(ValueError, match="one_shot step"):
    prune.one_shot(-1)
