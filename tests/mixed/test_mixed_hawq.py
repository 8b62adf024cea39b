"""HAWQ baseline: Hutchinson traces against exact ones, allocation under a budget, bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax import cost
from compressjax.mixed import hawq
from compressjax.mixed.budget import Budget
from compressjax.mixed.common import site_inputs
from compressjax.mixed.report import BitAllocation
from compressjax.models import CNN, MLP
from compressjax.train.steps import cross_entropy


def _quadratic(n: int, seed: int) -> np.ndarray:
  a = np.random.default_rng(seed).normal(size=(n, n))
  return (a @ a.T / n + np.diag(np.arange(1.0, n + 1))).astype(np.float32)


def test_hutchinson_is_exact_on_a_diagonal_hessian():
  d = jnp.asarray([1.0, -2.0, 3.5, 0.25])
  tr = hawq.hutchinson_trace(lambda p: 0.5 * jnp.sum(d * p["x"] ** 2), {"x": jnp.ones(4)},
                             jax.random.key(0), num_samples=3)
  np.testing.assert_allclose(tr["x"], d.sum(), rtol=1e-6)


def test_hutchinson_matches_the_exact_trace_of_each_block_of_a_quadratic():
  a = jnp.asarray(_quadratic(7, 0))

  def f(p):
    z = jnp.concatenate([p["u"], p["v"].ravel()])
    return 0.5 * z @ a @ z

  params = {"u": jnp.zeros(3), "v": jnp.zeros((2, 2))}
  tr = hawq.hutchinson_trace(f, params, jax.random.key(1), num_samples=200)
  np.testing.assert_allclose(tr["u"], np.trace(a[:3, :3]), rtol=0.05)
  np.testing.assert_allclose(tr["v"], np.trace(a[3:, 3:]), rtol=0.05)
  with pytest.raises(ValueError, match="num_samples=0"):
    hawq.hutchinson_trace(f, params, jax.random.key(1), num_samples=0)


@pytest.fixture(scope="module")
def setup():
  model = MLP(features=(6, 5, 4), num_classes=3)  # dense0 and head are the edges
  x = jax.random.normal(jax.random.key(0), (8, 2, 2, 1))
  y = jnp.arange(8) % 3
  variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
  return model, x, y, variables, cost.profile(model, x)


def test_site_traces_match_the_exact_hessian_traces(setup):
  model, x, y, variables, _ = setup
  traces = hawq.site_traces(model, variables, x, y, jax.random.key(3), weights=["dense1/kernel"],
                            inputs=["dense2/kernel"], num_samples=100)
  params = variables["params"]

  def loss_of_kernel(k):
    p = {**params, "dense1": {**params["dense1"], "kernel": k}}
    return cross_entropy(model.apply({"params": p}, x), y)

  k = params["dense1"]["kernel"]
  h = jax.jit(jax.hessian(loss_of_kernel))(k).reshape(k.size, k.size)
  np.testing.assert_allclose(traces["dense1/kernel"]["w"], np.trace(h) / k.size, rtol=0.1)
  inputs = jax.jit(lambda v, x: site_inputs(model, v, x))(variables, x)

  def loss_of_input(delta):
    def add(next_fun, args, kwargs, context):
      if context.module.name == "dense2" and context.method_name == "__call__":
        args = (args[0] + delta, *args[1:])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(add):
      return cross_entropy(model.apply(variables, x), y)

  d = jnp.zeros_like(inputs["dense2/kernel"])
  h = jax.jit(jax.hessian(loss_of_input))(d).reshape(d.size, d.size)
  np.testing.assert_allclose(traces["dense2/kernel"]["a"], np.trace(h) / d.size, rtol=0.1)


def test_allocation_meets_the_budget_and_respects_the_edges(setup):
  model, x, y, variables, profile = setup
  uniform = BitAllocation.uniform(profile.paths, 3)
  budget = Budget(target=uniform.cost(profile, Budget(target=1.0)))
  searched = ("dense1/kernel", "dense2/kernel")
  traces = {p: {"w": 1.0, "a": 0.5} for p in searched}  # given: skips the Hessian
  alloc = hawq.hawq_allocation(model, variables, x, y, profile, budget, key=jax.random.key(2),
                               max_bits=6, traces=traces)
  assert alloc.method == "hawq" and alloc.paths == profile.paths
  assert alloc.w_bits["dense0/kernel"] == 8 and alloc.a_bits["dense0/kernel"] is None
  assert alloc.w_bits["head/kernel"] == 8 and alloc.a_bits["head/kernel"] == 8
  assert all(2 <= alloc.w_bits[p] <= 6 and 2 <= alloc.a_bits[p] <= 6 for p in searched)
  c = alloc.cost(profile, budget)
  assert c <= budget.target and c == alloc.meta["cost"] and alloc.meta["avg_hessian_trace"] == traces
  # No single searchable operand could take one more bit and still fit (the greedy fill ran).
  for p in searched:
    for i, bits in enumerate((alloc.w_bits, alloc.a_bits)):
      if bits[p] < 6:
        trial = [dict(alloc.w_bits), dict(alloc.a_bits)]
        trial[i][p] = bits[p] + 1
        assert budget.cost(profile, *trial) > budget.target
  # More sensitive weights (100x the trace) get at least as many bits.
  sens = hawq.hawq_allocation(model, variables, x, y, profile, budget, key=jax.random.key(2),
                              max_bits=6, traces={**traces, "dense2/kernel": {"w": 100.0, "a": 0.5}})
  assert sens.w_bits["dense2/kernel"] >= alloc.w_bits["dense2/kernel"]
  assert sens.cost(profile, budget) <= budget.target


def test_unreachable_budget_and_unprofiled_layers_are_refused(setup):
  model, x, y, variables, profile = setup
  with pytest.raises(ValueError, match="below .* smallest cost"):
    hawq.hawq_allocation(model, variables, x, y, profile, Budget(target=10.0),
                         key=jax.random.key(0), num_samples=1)
  other = cost.profile(CNN(widths=(2, 2), hidden=4), jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError,
                     match=r"layers \['dense0/kernel', 'dense1/kernel', 'dense2/kernel'\] have no entry"):
    hawq.hawq_allocation(model, variables, x, y, other, Budget(target=1e9), key=jax.random.key(0))
