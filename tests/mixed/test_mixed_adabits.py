"""AdaBits: switchable quantizers and BatchNorm, joint training, direct adaptation, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compressjax.mixed import adabits as ab
from compressjax.models import CNN
from compressjax.quant import PACT, SAT
from compressjax.train.adabits_step import make_joint_step
from compressjax.train.state import TrainState

BITS = (8, 4, 2)


@pytest.fixture(scope="module")
def setup():
  model = CNN(widths=(4, 8), hidden=16, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
  y = jnp.arange(16) % 10
  float_vars = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)  # rbg: fast to compile
  am = ab.adabits(model, BITS, x)
  return model, x, y, float_vars, am, ab.init_from_float(am, float_vars, x)


def _switch(tree, bits):
  return {k: v for k, v in tree.items() if k.endswith(f"_b{bits}")}


def test_switchable_creates_every_state_and_runs_the_active_one():
  x = jnp.linspace(-1.0, 3.0, 41)
  s = ab.Switchable((PACT(bits=8, alpha_init=2.0), PACT(bits=2, alpha_init=2.0)), active=2)
  params, stats = s.init(x)
  assert params == {"8": {"alpha": 2.0}, "2": {"alpha": 2.0}} and stats == {"8": {}, "2": {}}
  assert (s.bits, s.bits_list) == (2, (8, 2))
  params = {"8": {"alpha": jnp.float32(2.0)}, "2": {"alpha": jnp.float32(1.5)}}
  np.testing.assert_array_equal(s.fake(x, params, stats), PACT(bits=2).fake(x, {"alpha": 1.5}, {}))
  np.testing.assert_array_equal(s.at(8).fake(x, params, stats),
                                PACT(bits=8).fake(x, {"alpha": 2.0}, {}))
  assert len(np.unique(np.asarray(s.fake(x, params, stats)))) == 4


def test_float_batchnorm_is_copied_into_every_switch_and_weights_are_shared(setup):
  _, _, _, float_vars, am, v = setup
  for col in ("params", "batch_stats"):
    for name, leaf in float_vars[col]["bn1"].items():
      for b in BITS:
        np.testing.assert_array_equal(v[col]["bn1"][f"{name}_b{b}"], leaf)
  assert set(v["params"]["conv1"]) == {"kernel"}  # the user's tree is untouched
  state = v["params"]["compressjax"]["conv1"]["kernel"]
  assert set(state["input"]) == {"8", "4", "2"}  # one PACT clip level per bit-width
  assert all(set(state["input"][str(b)]) == {"alpha"} for b in BITS)
  np.testing.assert_array_equal(v["params"]["conv1"]["kernel"], float_vars["params"]["conv1"]["kernel"])


def test_at_bits_runs_the_same_variables_at_each_bit_width(setup):
  model, x, _, float_vars, am, v = setup
  outs = {b: jax.jit(ab.at_bits(am, b).apply)(v, x) for b in BITS}
  ref = jax.jit(model.apply)(float_vars, x)
  err = {b: float(jnp.abs(outs[b] - ref).mean()) for b in BITS}
  assert err[8] < err[4] < err[2]  # fewer bits, further from the float model


def test_each_bit_width_updates_only_its_own_batchnorm_statistics(setup):
  _, x, _, _, am, v = setup
  apply = lambda v, x: ab.at_bits(am, 4).apply(v, x, train=True, mutable=["batch_stats"])
  _, upd = jax.jit(apply)(v, x)
  for bn in ("bn0", "bn1"):
    new, old = upd["batch_stats"][bn], v["batch_stats"][bn]
    for b in BITS:
      same = all(np.array_equal(new[k], old[k]) for k in _switch(old, b))
      assert same == (b != 4), (bn, b)


def test_joint_step_sums_losses_and_updates_every_switch(setup):
  model, x, y, float_vars, *_ = setup
  am = ab.adabits(model, (4, 2), x)  # two switches: cheaper to compile than three
  opt = optax.sgd(0.1)
  v = dict(ab.init_from_float(am, float_vars, x))
  params = v.pop("params")
  state = TrainState(jnp.zeros((), jnp.int32), params, v, opt.init(params), jax.random.PRNGKey(0))
  new, metrics = make_joint_step(am, opt)(state, {"image": x, "label": y})
  total = sum(float(metrics[f"loss_b{b}"]) for b in (4, 2))
  np.testing.assert_allclose(float(metrics["loss"]), total, rtol=1e-6)
  for b in (4, 2):  # every switch's BN statistics and affine parameters moved
    assert not np.array_equal(new.model_state["batch_stats"]["bn0"][f"mean_b{b}"],
                              v["batch_stats"]["bn0"][f"mean_b{b}"])
    assert not np.array_equal(new.params["bn1"][f"scale_b{b}"], params["bn1"][f"scale_b{b}"])
    alpha = lambda p: p["compressjax"]["hidden"]["kernel"]["input"][str(b)]["alpha"]
    assert not np.array_equal(alpha(new.params), alpha(params))


def test_direct_adaptation_copies_a_switch_and_recalibration_moves_only_it(setup):
  model, x, _, float_vars, _, _ = setup
  m8 = ab.adabits(model, (8,), x)
  v8 = ab.init_from_float(m8, float_vars, x)
  m82 = ab.adabits(model, (8, 2), x)
  v82 = ab.copy_switch(v8, 8, 2)
  assert jax.tree.structure(v82) == jax.tree.structure(ab.init_from_float(m82, float_vars, x))
  np.testing.assert_array_equal(v82["params"]["bn0"]["scale_b2"], v8["params"]["bn0"]["scale_b8"])
  hidden = lambda v: v["params"]["compressjax"]["hidden"]["kernel"]["input"]
  np.testing.assert_array_equal(hidden(v82)["2"]["alpha"], hidden(v8)["8"]["alpha"])
  rec = ab.recalibrate_bn(ab.at_bits(m82, 2), v82, [x] * 3)
  bn = rec["batch_stats"]["bn1"]
  np.testing.assert_array_equal(bn["mean_b8"], v82["batch_stats"]["bn1"]["mean_b8"])
  assert not np.array_equal(bn["mean_b2"], v82["batch_stats"]["bn1"]["mean_b2"])
  with pytest.raises(ValueError, match="at least one batch"):
    ab.recalibrate_bn(m82, v82, [])


@pytest.mark.parametrize(
    "bits_list, match",
    [((), "empty"), ((2, 4, 8), r"not sorted from high to low; use \(8, 4, 2\)"),
     ((8, 4, 4), "duplicates"), ((8, 1), r"\[1\] outside the quantizer's allowed range 2..16"),
     ((17, 8), r"\[17\] outside")],
)
def test_bad_bits_list_is_refused(setup, bits_list, match):
  model, x, *_ = setup
  with pytest.raises(ValueError, match=match):
    ab.adabits(model, bits_list, x)


def test_bad_switch_requests_are_refused(setup):
  _, _, _, _, am, _ = setup
  with pytest.raises(ValueError, match=r"bits=3 is not one of the model's bit-widths \(8, 4, 2\)"):
    ab.at_bits(am, 3)
  with pytest.raises(ValueError, match="active=3"):
    ab.Switchable((SAT(bits=8), SAT(bits=4)), active=3)
  with pytest.raises(TypeError, match="not an AdaBits model"):
    ab.at_bits(CNN(), 4)


def test_export_at_a_bit_width_serves_what_the_fake_quant_model_computes(setup):
  _, x, _, _, am, v = setup
  from compressjax.export import export, serving_paths  # pylint: disable=g-import-not-at-top

  m4 = ab.at_bits(am, 4)
  served, serving_vars = export(m4, v, x)
  np.testing.assert_allclose(served.apply(serving_vars, x), m4.apply(v, x), rtol=1e-5, atol=1e-5)
  assert serving_paths(served, serving_vars, x)["hidden/kernel"][0] == "int8 dot"


def test_nnx_adabits_computes_the_linen_model_trains_jointly_and_serves_every_bit_width(setup):
  """The NNX twin of the CNN: ``adabits`` gives it switchable quantizers and a copy of every
  BatchNorm per bit-width (the model's own stay as they were); at init each bit-width computes
  exactly the Linen AdaBits model; joint training through ``at_bits`` views (which share the
  state) moves each switch's statistics on its own; every bit-width serves as fake-quant."""
  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from compressjax.models import nnx_zoo  # pylint: disable=g-import-not-at-top

  model, x, y, float_vars, am, v = setup
  twin = nnx_zoo.load_linen(nnx_zoo.CNN(widths=(4, 8), hidden=16, num_classes=10,
                                        rngs=nnx.Rngs(0)), float_vars)
  twin.eval()
  own_mean = np.asarray(twin.bn1.mean.get_value())
  nm = ab.adabits(twin, BITS, x)
  assert set(nm.switches) == {"8", "4", "2"}
  assert set(nm.switches["4"]["bn1"]) == {"scale", "bias", "mean", "var"}
  linen = ab.init_from_float(am, float_vars, x, alpha_percentile=None)
  for b in BITS:
    np.testing.assert_allclose(ab.at_bits(nm, b)(x), ab.at_bits(am, b).apply(linen, x, train=False),
                               rtol=1e-6, atol=1e-6)
  nm.train()
  opt = nnx.Optimizer(nm, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt):
    def loss(m):
      return sum(optax.softmax_cross_entropy_with_integer_labels(ab.at_bits(m, b)(x), y).mean()
                 for b in BITS)

    value, grads = nnx.value_and_grad(loss)(m)
    opt.update(m, grads)
    return value

  losses = [float(step(nm, opt)) for _ in range(8)]
  assert losses[-1] < losses[0]
  np.testing.assert_array_equal(twin.bn1.mean.get_value(), own_mean)
  means = {b: np.asarray(nm.switches[str(b)]["bn1"]["mean"].get_value()) for b in BITS}
  assert not np.allclose(means[8], means[2]) and not np.allclose(means[8], own_mean)
  nm.eval()
  outs = {}
  for b in BITS:
    view = ab.at_bits(nm, b)
    outs[b] = view(x)
    np.testing.assert_allclose(cj.export(view)(x), outs[b], rtol=1e-5, atol=1e-5)
  assert not np.allclose(outs[8], outs[2])
  before = {b: np.asarray(nm.switches[str(b)]["bn1"]["mean"].get_value()) for b in (8, 2)}
  stats = nm.site_values("stats")
  ab.recalibrate_bn(ab.at_bits(nm, 2), None, [x] * 3)  # only the active switch's statistics
  assert not np.allclose(nm.switches["2"]["bn1"]["mean"].get_value(), before[2])
  np.testing.assert_array_equal(nm.switches["8"]["bn1"]["mean"].get_value(), before[8])
  assert jax.tree.all(jax.tree.map(np.array_equal, nm.site_values("stats"), stats))
  assert twin.bn1.use_running_average  # back in eval mode
  ab.copy_switch(nm, 8, 2)  # direct adaptation: the 8-bit BatchNorm and clip levels at 2 bits
  for name in ("mean", "scale"):
    np.testing.assert_array_equal(nm.switches["2"]["bn1"][name].get_value(),
                                  nm.switches["8"]["bn1"][name].get_value())
  site = nm.site_values()["conv1"]["kernel"]["input"]
  assert jax.tree.leaves(site["2"]) and jax.tree.all(jax.tree.map(np.array_equal, site["2"], site["8"]))
  with pytest.raises(TypeError, match="an NNX model starts from its own weights"):
    ab.init_from_float(nm, float_vars, x)
  with pytest.raises(TypeError, match="Linen method interceptor"):
    cj.compress(twin, [cj.Rule(pattern=".", weight=SAT(bits=4))], x,
                interceptors=(lambda *a: None,))


def test_adabits_on_custom_einsum_layers_with_batchnorm_in_scanned_stacks_linen_and_nnx():
  """Out of the zoo: a custom layer contracting its own ``w`` with ``jnp.einsum`` then a
  BatchNorm, stacked 3 times under ``nn.scan`` / ``nnx.scan``. Each bit-width has its own stacked
  BatchNorm switch, the bit-widths compute differently, and each serves as fake-quant."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import compressjax as cj  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):
    @nn.compact
    def __call__(self, c, _):
      w = self.param("w", nn.initializers.normal(0.5), (c.shape[-1], 4))
      return nn.tanh(nn.BatchNorm(use_running_average=True)(jnp.einsum("bi,io->bo", c, w))), None

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      del train
      x = nn.Dense(4, name="first")(x)
      x, _ = nn.scan(Block, variable_axes={"params": 0, "batch_stats": 0},
                     split_rngs={"params": True}, length=3)(name="stack")(x, None)
      return nn.Dense(3, name="head")(x)

  class NNXBlock(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 4)) * 0.5)
      self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
      return jnp.tanh(self.bn(jnp.einsum("bi,io->bo", x, self.w[...])))

  class NNXStack(nnx.Module):
    def __init__(self, rngs):
      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return NNXBlock(rngs)

      self.first, self.layers = nnx.Linear(4, 4, rngs=rngs), make(rngs)
      self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      body = nnx.scan(lambda layer, x: layer(x), in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      return self.head(body(self.layers, self.first(x)))

  x = jax.random.normal(jax.random.key(0), (8, 4))
  linen = ab.adabits(Stack(), (8, 4), x)
  variables = linen.init(jax.random.key(1), x)
  assert variables["batch_stats"]["stack"]["BatchNorm_0"]["mean_b4"].shape == (3, 4)
  outs = {b: ab.at_bits(linen, b).apply(variables, x) for b in (8, 4)}
  assert not np.allclose(outs[8], outs[4])
  for b in (8, 4):
    serving, served = cj.export(ab.at_bits(linen, b), variables, x)
    np.testing.assert_allclose(jax.jit(serving.apply)(served, x), outs[b], rtol=1e-5, atol=1e-5)

  model = NNXStack(nnx.Rngs(0))
  am = ab.adabits(model, (8, 4), x)
  assert am.switches["4"]["layers/bn"]["mean"].get_value().shape == (3, 4)
  own = np.asarray(model.layers.bn.mean.get_value())
  am.train()
  opt = nnx.Optimizer(am, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(m, opt):
    opt.update(m, nnx.grad(lambda m: sum(jnp.mean(ab.at_bits(m, b)(x) ** 2) for b in (8, 4)))(m))

  for _ in range(3):
    step(am, opt)
  np.testing.assert_array_equal(model.layers.bn.mean.get_value(), own)
  assert not np.allclose(am.switches["4"]["layers/bn"]["mean"].get_value(),
                         am.switches["8"]["layers/bn"]["mean"].get_value())
  am.eval()
  for b in (8, 4):
    view = ab.at_bits(am, b)
    np.testing.assert_allclose(cj.export(view)(x), view(x), rtol=1e-5, atol=1e-5)
