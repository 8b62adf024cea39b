"""FracBits: interpolation gradient, search under a budget, hardening to 1%, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax import cost
from compressjax.core import compress
from compressjax.mixed import fracbits as fb
from compressjax.mixed import report as mr
from compressjax.models import CNN, MLP
from compressjax.quant import PACT, SAT, DoReFa
from compressjax.train.fracbits_step import make_search_step
from compressjax.train.state import TrainState


@pytest.fixture(scope="module")
def setup():
  model = CNN(widths=(4, 8), hidden=16, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  y = jnp.arange(16) % 10
  float_vars = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)  # rbg: fast to compile
  profile = cost.profile(model, x)
  fm = fb.fracbits(model, x, target_bits=3, max_bits=4, kernel_wise=True)
  return model, x, y, profile, fm, fb.init_from_float(fm, float_vars, x)


def _lam(params, site, operand="weight"):
  """The FracBits lambda of a site's operand in the core's nested state layout."""
  return params["compressjax"][site]["kernel"][operand]["lambda"]


def _set_lam(params, site, operand, value):
  params["compressjax"][site]["kernel"][operand]["lambda"] = value


def _uniform3_budget(model, x, profile):
  """The BitOPs of uniform 3-bit SAT with 8-bit edges, from the same rule layout."""
  um = compress(model, mr.rules_from_json(mr.BitAllocation.create(
      {"conv0/kernel": 8, "conv1/kernel": 3, "hidden/kernel": 3, "head/kernel": 8},
      {"conv0/kernel": None, "conv1/kernel": 3, "hidden/kernel": 3, "head/kernel": 8})))
  return fb.Budget(target=fb.search_cost(um, None, profile, fb.Budget(target=1.0)))


@pytest.mark.parametrize("channels", [False, True])
def test_gradient_wrt_lambda_is_q_ceil_minus_q_floor(channels):
  w = jax.random.normal(jax.random.key(2), (3, 3, 2, 4))
  g = jax.random.normal(jax.random.key(3), w.shape)
  t = fb.FracBits(base=SAT(bits=8), init_bits=3.5, min_bits=2, max_bits=6, channels=channels)
  params, stats = t.init(w)
  lam = jnp.asarray([3.3, 2.5, 4.9, 5.2]) if channels else jnp.float32(3.3)
  grad = jax.jit(jax.grad(lambda l: jnp.sum(g * t.fake(w, {"lambda": l}, stats))))(lam)
  q = {k: jax.jit(SAT(bits=k).fake)(w, {}, {}) for k in range(2, 7)}
  lo = np.floor(np.asarray(lam)).astype(int)
  diff = np.stack([np.asarray(q[int(f) + 1] - q[int(f)])[..., i] for i, f in enumerate(np.broadcast_to(lo, (4,)))], -1)
  expected = np.sum(np.asarray(g) * diff, axis=(0, 1, 2))
  np.testing.assert_allclose(grad, expected if channels else expected.sum(), rtol=1e-4, atol=1e-5)
  # Integer lambda is exactly the base quantizer; fractional is the linear blend.
  fake = jax.jit(lambda l: t.fake(w, {"lambda": l}, stats))
  np.testing.assert_array_equal(fake(jnp.float32(4.0)), q[4])
  blend = fake(jnp.float32(3.25))
  np.testing.assert_allclose(blend, 0.25 * q[4] + 0.75 * q[3], rtol=1e-6, atol=1e-7)


def test_zero_bits_zero_the_operand_and_activations_interpolate_after_the_clip():
  w = jax.random.normal(jax.random.key(4), (8, 3))
  t = fb.FracBits(base=DoReFa(bits=8), init_bits=1.0, min_bits=0, max_bits=2)
  np.testing.assert_array_equal(t.fake(w, {"lambda": jnp.float32(0.0)}, {}), 0.0)
  half = t.fake(w, {"lambda": jnp.float32(0.5)}, {})
  np.testing.assert_allclose(half, 0.5 * DoReFa(bits=1).fake(w, {}, {}), rtol=1e-6)
  a = jnp.linspace(-1.0, 5.0, 25)
  ta = fb.FracBits(base=PACT(bits=8), init_bits=2.5, min_bits=2, max_bits=4)
  p = {"alpha": jnp.float32(4.0), "lambda": jnp.float32(2.5)}
  mid = 0.5 * (PACT(bits=2).fake(a, p, {}) + PACT(bits=3).fake(a, p, {}))
  np.testing.assert_allclose(ta.fake(a, p, {}), mid, rtol=1e-6)


def test_bits_move_under_the_penalty_and_the_hardened_cost_is_within_one_percent(setup, tmp_path):
  model, x, y, profile, fm, v = setup
  budget = _uniform3_budget(model, x, profile)
  v = dict(v)
  params = v.pop("params")
  start = float(fb.search_cost(fm, params, profile, budget))
  assert start > 1.05 * budget.target  # lambdas start at target + 0.5
  opt = optax.adam(0.05)
  state = TrainState(jnp.zeros((), jnp.int32), params, v, opt.init(params), jax.random.PRNGKey(0))
  step = make_search_step(fm, opt, profile, budget, params)
  for _ in range(15):
    state, metrics = step(state, {"image": x, "label": y})
  moved = np.abs(np.asarray(_lam(state.params, "conv1")) - 3.5)
  assert moved.max() > 0.3
  assert abs(float(metrics["cost"]) / budget.target - 1) < abs(start / budget.target - 1) / 2
  alloc = fb.harden(fm, state.params, profile, budget)
  assert alloc.meta["relative_error"] <= 0 and abs(alloc.meta["relative_error"]) <= 0.01
  np.testing.assert_allclose(alloc.cost(profile, budget), alloc.meta["cost"])
  assert isinstance(alloc.w_bits["conv1/kernel"], list) and len(alloc.w_bits["conv1/kernel"]) == 8
  assert alloc.w_bits["conv0/kernel"] == 8 and alloc.a_bits["conv0/kernel"] is None
  assert alloc.w_bits["head/kernel"] == 8
  # The JSON round trip gives rules; at the hardened bits they compute what the search model
  # computes with its lambdas set to those integers.
  path = str(tmp_path / "alloc.json")
  alloc.save(path)
  fixed = compress(model, mr.rules_from_json(path))
  hard = jax.tree.map(lambda a: a, state.params)
  for p in ("conv1", "hidden"):
    _set_lam(hard, p, "weight", jnp.asarray(alloc.w_bits[f"{p}/kernel"], jnp.float32))
    _set_lam(hard, p, "input", jnp.float32(alloc.a_bits[f"{p}/kernel"]))
  fixed_vars = {**state.model_state, "params": state.params}
  out_fixed = jax.jit(fixed.apply)(fixed_vars, x)
  out_search = jax.jit(fm.apply)({**state.model_state, "params": hard}, x)
  np.testing.assert_allclose(out_fixed, out_search, rtol=1e-5, atol=1e-5)


def test_harden_fills_bits_back_when_rounding_lands_far_under_the_budget(setup):
  model, x, _, profile, fm, v = setup
  budget = _uniform3_budget(model, x, profile)
  params = jax.tree.map(lambda a: a, v["params"])
  _set_lam(params, "conv1", "input", jnp.float32(2.0))  # 6.8% of the budget below uniform 3-bit
  for p in ("conv1", "hidden"):
    _set_lam(params, p, "weight", jnp.full_like(_lam(params, p), 3.0))
  _set_lam(params, "hidden", "input", jnp.float32(3.0))
  alloc = fb.harden(fm, params, profile, budget)
  assert alloc.meta["greedy_fill_bits"] > 0
  assert -0.01 <= alloc.meta["relative_error"] <= 0
  assert alloc.a_bits["conv1/kernel"] == 2 and max(alloc.w_bits["conv1/kernel"]) > 3


def test_clamp_lambdas_projects_onto_the_allowed_range(setup):
  *_, fm, v = setup
  params = jax.tree.map(lambda a: a, v["params"])
  _set_lam(params, "conv1", "weight", jnp.full((8,), 11.0))
  _set_lam(params, "hidden", "input", jnp.float32(-3.0))
  out = fb.clamp_lambdas(fm, params)
  np.testing.assert_array_equal(_lam(out, "conv1"), 4.0)
  assert float(_lam(out, "hidden", "input")) == 2.0
  np.testing.assert_array_equal(out["conv1"]["kernel"], params["conv1"]["kernel"])


def test_budget_below_reach_and_unprofiled_layers_are_refused(setup):
  model, x, _, profile, fm, v = setup
  with pytest.raises(ValueError, match="below .* the smallest cost the allowed bits reach"):
    make_search_step(fm, optax.sgd(0.1), profile, fb.Budget(target=1000.0), v["params"])
  with pytest.raises(ValueError, match="below"):
    fb.harden(fm, v["params"], profile, fb.Budget(target=1000.0))
  other = cost.profile(MLP(num_classes=10), x)
  with pytest.raises(ValueError, match=r"layers \[.*'conv1/kernel', 'hidden/kernel'\] have no entry"):
    fb.search_cost(fm, v["params"], other, fb.Budget(target=1e6))


def test_bad_configuration_is_refused():
  with pytest.raises(ValueError, match="min_bits < max_bits"):
    fb.FracBits(base=SAT(), init_bits=4.0, min_bits=4, max_bits=4)
  with pytest.raises(ValueError, match="bits 1..8 are not allowed for SAT; use 0 .* or 2..16"):
    fb.FracBits(base=SAT(), init_bits=4.0, min_bits=1, max_bits=8)
  with pytest.raises(ValueError, match="init_bits=9.5"):
    fb.FracBits(base=SAT(), init_bits=9.5)
  with pytest.raises(ValueError, match="kind='flops'"):
    fb.Budget(target=1.0, kind="flops")
  with pytest.raises(ValueError, match="target=0"):
    fb.Budget(target=0)


def test_search_state_layout_and_export_is_refused_naming_the_site(setup):
  model, x, _, _, fm, v = setup
  state = v["params"]["compressjax"]
  assert "compressjax" in v["params"] and set(v["params"]["conv1"]) == {"kernel"}
  assert state["conv1"]["kernel"]["weight"]["lambda"].shape == (8,)  # kernel-wise: one per channel
  assert state["hidden"]["kernel"]["input"]["lambda"].shape == ()
  assert "alpha" in state["hidden"]["kernel"]["input"]  # PACT's clip level beside its lambda
  from compressjax import export  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"site 'conv1/kernel'.*kernel-wise FracBits .* no integer export"):
    export(fm, v, x)


def test_nnx_search_costs_like_linen_hardens_and_its_fixed_model_serves(setup):
  """The NNX twin of the CNN: same profile and search cost as Linen, an ``nnx.Optimizer``
  search moves the cost to the budget (lambdas clamped in place), harden meets it, and the
  fixed-bit NNX model at the hardened bits computes what the search model does at them."""
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.models import nnx_zoo  # pylint: disable=g-import-not-at-top

  model, x, y, profile, fm, v = setup
  twin = nnx_zoo.load_linen(nnx_zoo.CNN(widths=(4, 8), hidden=16, num_classes=10,
                                        rngs=nnx.Rngs(0)), jax.jit(model.init)(jax.random.key(1), x))
  assert cost.profile(twin, x) == profile
  twin.eval()
  search = fb.fracbits(twin, x, target_bits=3, max_bits=4, kernel_wise=True)
  budget = _uniform3_budget(model, x, profile)
  start = float(fb.search_cost(search, None, profile, budget))
  np.testing.assert_allclose(start, fb.search_cost(fm, v["params"], profile, budget), rtol=1e-6)
  search.train()
  opt = nnx.Optimizer(search, optax.adam(0.05), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt):
    def loss(m):
      ce = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
      return ce + budget.penalty(fb.search_cost(m, None, profile, budget))

    opt.update(m, nnx.grad(loss)(m))
    fb.clamp_lambdas(m)

  for _ in range(15):
    step(search, opt)
  lams = search.site_values()["conv1"]["kernel"]["weight"]["lambda"]
  assert float(jnp.min(lams)) >= 2.0 and float(jnp.max(lams)) <= 4.0
  end = float(fb.search_cost(search, None, profile, budget))
  assert abs(end / budget.target - 1) < abs(start / budget.target - 1) / 2
  alloc = fb.harden(search, None, profile, budget)
  assert abs(alloc.meta["relative_error"]) <= 0.01
  search.eval()
  fixed = cj.compress(search.model, mr.rules_from_json(alloc), x)
  fixed.set_site_values(fb.transfer(search.site_values(), fixed.site_values()))
  hard = search.site_values()
  for p in ("conv1", "hidden"):
    hard[p]["kernel"]["weight"]["lambda"] = jnp.asarray(alloc.w_bits[f"{p}/kernel"], jnp.float32)
    hard[p]["kernel"]["input"]["lambda"] = jnp.float32(alloc.a_bits[f"{p}/kernel"])
  search.set_site_values(hard)
  fixed.eval()
  np.testing.assert_allclose(fixed(x), search(x), rtol=1e-5, atol=1e-5)
  served = cj.export(fixed)
  np.testing.assert_allclose(served(x), fixed(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base, bits", [(SAT(), (2, 3, 4, 2, 4, 3, 2, 4)),
                                        (DoReFa(), (2, 3, 4, 0, 4, 1, 2, 4))])
def test_per_channel_bits_export_as_one_qarray_and_serve_as_fake_quant(setup, base, bits):
  """A hardened kernel-wise allocation (ChannelBits: 0 to 4 bits across channels) exports
  every channel at its own bits in a 4-bit container, Linen and NNX alike."""
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.models import nnx_zoo  # pylint: disable=g-import-not-at-top
  from compressjax.mixed.interp import ChannelBits  # pylint: disable=g-import-not-at-top
  from compressjax.qarray import QArray  # pylint: disable=g-import-not-at-top

  w = jax.random.normal(jax.random.key(5), (3, 3, 2, 8))
  t = ChannelBits(base=base, bits=bits)
  qa = t.export(w, {}, {})
  assert qa.bits == 4
  np.testing.assert_allclose(qa.dequantize(), t.fake(w, {}, {}), rtol=1e-6, atol=1e-7)
  for c in np.flatnonzero(np.asarray(bits) == 0):
    np.testing.assert_array_equal(np.asarray(qa.dequantize())[..., c], 0.0)
  model, x, _, _, _, _ = setup
  alloc = mr.BitAllocation.create(
      {"conv0/kernel": 8, "conv1/kernel": list(t.bits), "hidden/kernel": 3, "head/kernel": 8},
      {"conv0/kernel": None, "conv1/kernel": 3, "hidden/kernel": 3, "head/kernel": 8})
  method = lambda wb, ab: (base.replace(bits=wb), PACT(bits=ab))
  rules = mr.rules_from_json(alloc, method=method)
  fixed = compress(model, rules)
  variables = jax.jit(fixed.init)(jax.random.key(1), x)
  serving, served = cj.export(fixed, variables, x)
  assert isinstance(served["served"]["conv1"]["kernel"]["weight"], QArray)
  np.testing.assert_allclose(jax.jit(serving.apply)(served, x), fixed.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  twin = nnx_zoo.CNN(widths=(4, 8), hidden=16, num_classes=10, rngs=nnx.Rngs(0))
  twin.eval()
  fixed_nnx = cj.compress(twin, rules, x)
  np.testing.assert_allclose(cj.export(fixed_nnx)(x), fixed_nnx(x), rtol=1e-5, atol=1e-5)


def test_out_of_zoo_custom_einsum_layers_search_harden_and_serve_and_scans_are_refused():
  """A Linen model with a custom layer contracting its own ``w`` with ``jnp.einsum`` and its NNX
  version: the middle (searched, kernel-wise) custom layer hardens to the budget and the fixed
  model serves; a searched site inside ``nn.scan`` is refused at build time, naming it."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import compressjax as cj  # pylint: disable=g-import-not-at-top

  class Mix(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.normal(0.5), (x.shape[-1], 8))
      return nn.tanh(jnp.einsum("bi,io->bo", x, w))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, name="head")(Mix(name="mid")(Mix(name="inp")(x)))

  class Block(nn.Module):
    @nn.compact
    def __call__(self, c, _):
      return Mix()(c), None

  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = Mix(name="inp")(x)
      x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=3)(name="stack")(x, None)
      return nn.Dense(3, name="head")(x)

  class NNXNet(nnx.Module):
    def __init__(self, rngs):
      self.inp = nnx.Param(jax.random.normal(rngs.params(), (8, 8)) * 0.5)
      self.mid = nnx.Param(jax.random.normal(rngs.params(), (8, 8)) * 0.5)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      x = jnp.tanh(jnp.einsum("bi,io->bo", x, self.inp[...]))
      return self.head(jnp.tanh(jnp.einsum("bi,io->bo", x, self.mid[...])))

  x = jax.random.normal(jax.random.key(0), (16, 8))
  with pytest.raises(ValueError, match=r"sites \['stack/Mix_0/w'\] are scanned stacks"):
    fb.fracbits(Scanned(), x)
  for model in (Net(), NNXNet(nnx.Rngs(0))):
    profile = cost.profile(model, x)
    assert [s.path for s in profile.sites] == (["inp/w", "mid/w", "head/kernel"]
                                               if isinstance(model, nn.Module) else
                                               ["inp", "mid", "head/kernel"])
    search = fb.fracbits(model, x, target_bits=3, max_bits=4, kernel_wise=True)
    if isinstance(model, nn.Module):
      params = search.init(jax.random.key(1), x)["params"]
    else:
      params = None
    budget = fb.Budget(target=0.95 * float(fb.search_cost(search, params, profile,
                                                          fb.Budget(target=1.0))))
    alloc = fb.harden(search, params, profile, budget)
    assert abs(alloc.meta["relative_error"]) <= 0.01
    mid = alloc.w_bits["mid/w" if isinstance(model, nn.Module) else "mid"]
    assert len(set(mid)) > 1  # per-channel bits: served through ChannelBits
    fixed = compress(model, mr.rules_from_json(alloc)) if isinstance(model, nn.Module) else (
        cj.compress(model, mr.rules_from_json(alloc), x))
    if isinstance(model, nn.Module):
      variables = fixed.init(jax.random.key(1), x)
      serving, served = cj.export(fixed, variables, x)
      out, fake = jax.jit(serving.apply)(served, x), fixed.apply(variables, x)
    else:
      fixed.eval()
      out, fake = cj.export(fixed)(x), fixed(x)
    np.testing.assert_allclose(out, fake, rtol=1e-5, atol=1e-5)
