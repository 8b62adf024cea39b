"""Op-level sites on models the zoo does not contain, Linen and NNX: quantized, exported, served."""

import functools
import re
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import compressjax as cj
from compressjax.core import Rule, UnusedRuleWarning, compress, discover
from compressjax.core.compress import SITE_PARAMS, lean_compiler_options
from compressjax.core.tree_paths import flat_paths, get_path
from compressjax.export import serving_paths
from compressjax.qarray import QArray
from compressjax.quant import LSQ, PER_CHANNEL, Uniform, ste
from compressjax.quant import lsq as lsq_module

W4 = LSQ(bits=4, granularity=PER_CHANNEL)
A8 = LSQ(bits=8, kind="activation", signed=True)
CATCH_ALL = [Rule(pattern=".", weight=W4, act=A8)]


def _x(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


class CustomEinsum(nn.Module):
  """Reads its own parameter (not called kernel) and contracts it with jnp.einsum."""

  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.normal(0.5), (x.shape[-1], 6))
    return jnp.einsum("bi,io->bo", x, w)


class Block(nn.Module):

  @nn.compact
  def __call__(self, c, _):
    return nn.tanh(nn.Dense(6)(c)), None


class ScanModel(nn.Module):
  """A custom layer, a scanned stack of 3 Dense layers, a head."""

  @nn.compact
  def __call__(self, x):
    x = CustomEinsum()(x)
    x, _ = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                   length=3)(name="stack")(x, None)
    return nn.Dense(3, name="head")(x)


class TiedLM(nn.Module):
  """Embedding lookup plus tied output projection (``Embed.attend``), and a second method."""

  def setup(self):
    self.embed = nn.Embed(11, 8)
    self.mix = nn.Dense(8)
    self.enc = nn.Dense(4)

  def __call__(self, tokens):
    return self.embed.attend(self.mix(self.embed(tokens)))

  def encode(self, tokens):
    return self.enc(self.embed(tokens))


class Attention(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.LayerNorm()(x)
    return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, name="attn")(x)


def _served_equals_fake(model, variables, x, **kw):
  fake = model.apply(variables, x, **kw)
  serving, served = cj.export(model, variables, x, **kw)
  out = jax.jit(lambda v, x: serving.apply(v, x, **kw))(served, x)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(fake, np.float32),
                             atol=1e-5, rtol=1e-5)
  return serving, served


def _qarrays(served):
  return [leaf for leaf in jax.tree_util.tree_leaves(served["served"],
                                                     is_leaf=lambda x: isinstance(x, QArray))
          if isinstance(leaf, QArray)]


def test_custom_layer_and_scanned_stack_are_sites_and_serve_as_integers():
  model, x = ScanModel(), _x((5, 4))
  sites = discover(model, x)
  assert [s.name for s in sites] == ["CustomEinsum_0/w", "stack/Dense_0/kernel", "head/kernel"]
  assert sites[1].stack_lengths == (3,)
  cm = compress(model, CATCH_ALL)
  variables = cm.init(jax.random.key(0), x)
  step = variables["params"]["compressjax"]["stack"]["Dense_0"]["kernel"]["weight"]["step"]
  assert step.shape == (3, 1, 6)  # one per layer of the stack, per output channel
  serving, served = _served_equals_fake(cm, variables, x)
  assert "w" not in served["params"]["CustomEinsum_0"]  # only the site read it
  stacked = served["served"]["stack"]["Dense_0"]["kernel"]["weight"]
  assert isinstance(stacked, QArray) and stacked.packed.shape[0] == 3
  assert len(_qarrays(served)) == 3
  paths = serving_paths(serving, served, x)
  assert {p for p, _ in paths.values()} == {"int8 dot"}


def test_compiled_export_of_custom_and_scanned_sites_linen_and_nnx(monkeypatch,
                                                                   assert_same_export):
  """With every site's export compiled (``COMPILE_MIN_SIZE`` 0; real models compile their large
  sites), the custom einsum layer, the scanned stack (one vmapped conversion) and their NNX
  versions hold the op-by-op export's codes and serve as fake-quant."""
  model, x = ScanModel(), _x((5, 4))
  cm = compress(model, CATCH_ALL)
  variables = cm.init(jax.random.key(0), x)
  nnx_models = [(compress(m(nnx.Rngs(0)), CATCH_ALL, xn), xn)
                for m, xn in ((NNXCustom, _x((6, 4))), (NNXStack, _x((3, 4))))]
  eager = [cj.export(cm, variables, x)[1]["served"]] + [
      _nnx_served_equals_fake(m, xn).served for m, xn in nnx_models]
  export_lib = sys.modules["compressjax.export"]
  monkeypatch.setattr(export_lib, "COMPILE_MIN_SIZE", 0)
  export_lib._compiled_export.cache_clear()  # pylint: disable=protected-access
  compiled = [_served_equals_fake(cm, variables, x)[1]["served"]] + [
      _nnx_served_equals_fake(m, xn).served for m, xn in nnx_models]
  # Every site went through a compiled conversion (Linen: the einsum, the stack, the head; NNX:
  # w, head, the stack); equal keys share one.
  info = export_lib._compiled_export.cache_info()  # pylint: disable=protected-access
  assert info.hits + info.misses == 6, info
  for c, e in zip(compiled, eager):
    assert_same_export(c, e)


def test_scanned_stack_trains_then_serves():
  model, x = compress(ScanModel(), CATCH_ALL), _x((8, 4))
  y = jnp.arange(8) % 3
  variables = model.init(jax.random.key(0), x)
  opt = optax.adam(1e-2)
  params = variables["params"]
  state = opt.init(params)

  @jax.jit
  def train(params, state):
    def loss(p):
      logits = model.apply({**variables, "params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    value, grads = jax.value_and_grad(loss)(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for _ in range(15):
    params, state, value = train(params, state)
    losses.append(float(value))
  assert losses[-1] < losses[0]
  _served_equals_fake(model, {**variables, "params": params}, x)


def test_compressed_ops_keep_the_model_names_in_the_compiled_program():
  """Profiles and HLO metadata name ops as the float model's do (quantizer ops under their
  site's module), without the trace's own scope markers."""
  float_model, x = ScanModel(), _x((8, 4))
  model = compress(float_model, CATCH_ALL)
  names = lambda m: set(re.findall(r'op_name="([^"]*)"', jax.jit(m.apply).lower(
      jax.eval_shape(m.init, jax.random.key(0), x), x).compile().as_text()))
  ours, theirs = names(model), names(float_model)
  scopes = lambda ns: {n.rsplit("/", 1)[0] for n in ns}
  assert scopes(theirs) <= scopes(ours), scopes(theirs) - scopes(ours)
  assert any(n.startswith("jit(apply)/ScanModel/CustomEinsum_0/") and "round" in n for n in ours)
  assert not [n for n in ours if "cj:" in n]


def test_init_from_keeps_the_float_arrays_of_custom_and_scanned_layers():
  float_model, x = ScanModel(), _x((8, 4))
  float_vars = float_model.init(jax.random.key(0), x)
  variables = cj.init_from(compress(float_model, CATCH_ALL), float_vars, x)
  for name, leaf in flat_paths(float_vars["params"]):  # not copies: the model is held once
    assert get_path(variables["params"], name) is leaf, name
  assert jax.tree.leaves(variables["params"][SITE_PARAMS])


class WideEinsumStack(nn.Module):
  """Six custom einsum layers of 256 x 256, each with its own parameter."""

  @nn.compact
  def __call__(self, x):
    for i in range(6):
      w = self.param(f"w{i}", nn.initializers.normal(0.06), (x.shape[-1], 256))
      x = jnp.tanh(jnp.einsum("bi,io->bo", x, w))
    return x


def test_init_from_holds_one_layer_of_temporaries_at_a_time(monkeypatch):
  # Its statistics are fused reductions and its schedule the memory-minimizing one: without
  # either, every layer's masked |w| or fake-quant weight was alive at once (5-6 kernels here).
  float_model, x = WideEinsumStack(), _x((2, 256))
  float_vars = float_model.init(jax.random.key(0), x)
  model, options = compress(float_model, CATCH_ALL), lean_compiler_options()
  temps, jit = [], jax.jit

  def measured_jit(fn, **options):  # each program init_from compiles, and its temporaries
    compiled = jit(fn, **options)

    def call(*args):
      temps.append(compiled.lower(*args).compile().memory_analysis().temp_size_in_bytes)
      return compiled(*args)
    return call

  monkeypatch.setattr(jax, "jit", measured_jit)
  cj.init_from(model, float_vars, x)
  monkeypatch.undo()
  assert temps and max(temps) <= 1.5 * 256 * 256 * 4, temps
  # Inside a user's jit (no nested compiler options) with the same options on the outer one.
  outer = jax.jit(functools.partial(cj.init_from, model), compiler_options=options)
  assert outer.lower(float_vars, x).compile().memory_analysis().temp_size_in_bytes <= max(temps)


def test_other_method_and_tied_attend():
  model, tokens = TiedLM(), jnp.array([[1, 2, 3], [4, 5, 6]])
  names = [s.name for s in discover(model, tokens)]
  assert names == ["mix/kernel", "embed/embedding"]  # attend reads the table: a site
  assert [s.name for s in discover(model, tokens, method="encode")] == ["enc/kernel"]
  cm = compress(model, CATCH_ALL)
  variables = cm.init(jax.random.key(0), tokens)
  _, served = _served_equals_fake(cm, variables, tokens)
  assert "embedding" in served["params"]["embed"]  # the lookup still reads it in float
  enc_vars = cm.init(jax.random.key(0), tokens, method="encode")
  plain = TiedLM().apply(enc_vars, tokens, method="encode")
  quantized = cm.apply(enc_vars, tokens, method="encode")
  assert not np.allclose(plain, quantized)  # encode runs quantized, not silently float


def test_attention_products_quantized_only_by_an_rhs_rule():
  model, x = Attention(), _x((2, 5, 8))
  act_sites = [s.name for s in discover(model, x) if not s.has_weight]
  assert act_sites == ["attn/dot_general#0", "attn/dot_general#1"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UnusedRuleWarning)
    weights_only = compress(model, CATCH_ALL)
    v1 = weights_only.init(jax.random.key(0), x)
  assert "dot_general#0" not in v1["params"]["compressjax"]["attn"]
  rules = [Rule(pattern="dot_general", act=A8, rhs=LSQ(bits=4, kind="activation", signed=True)),
           *CATCH_ALL]
  both = compress(model, rules)
  v2 = both.init(jax.random.key(0), x)
  assert set(v2["params"]["compressjax"]["attn"]["dot_general#1"]) == {"lhs", "rhs"}
  assert not np.allclose(weights_only.apply(v1, x), both.apply(v2, x))
  _served_equals_fake(both, v2, x)


def test_multi_axis_dense_general_has_one_scale_per_head_and_feature():
  model = nn.DenseGeneral(features=(2, 3), name="proj")
  x = _x((4, 5))
  cm = compress(model, CATCH_ALL)
  variables = cm.init(jax.random.key(0), x)
  _, served = _served_equals_fake(cm, variables, x)
  (q,) = _qarrays(served)
  scale = np.asarray(q.scale).reshape(2, 3)  # (heads, head_dim)
  assert len(np.unique(scale)) == 6


def test_bf16_parameters():
  model = nn.Dense(4, param_dtype=jnp.bfloat16, dtype=jnp.float32)
  x = _x((3, 8))
  cm = compress(model, CATCH_ALL)
  variables = cm.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].dtype == jnp.bfloat16
  _served_equals_fake(cm, variables, x)


def test_unused_and_empty_rules_warn():
  x = _x((2, 4))
  with pytest.warns(UnusedRuleWarning, match="typo"):
    compress(ScanModel(), [Rule(pattern="typo", weight=W4), *CATCH_ALL]).init(
        jax.random.key(0), x)
  with pytest.warns(UnusedRuleWarning, match="empty rule list"):
    compress(ScanModel(), [])


def test_keyword_flags_stay_static():
  class WithFlag(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool = True):
      x = nn.Dense(4)(x)
      return nn.Dropout(0.5, deterministic=not train)(x)

  sites = discover(WithFlag(), _x((2, 3)), train=False)
  assert [s.name for s in sites] == ["Dense_0/kernel"]


# ------------------------------------------------------------------------------------------------
# NNX versions.


class NNXCustom(nnx.Module):

  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 6)) * 0.5)
    self.head = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.tanh(jnp.einsum("bi,io->bo", x, self.w[...])))

  def features(self, x):
    return jnp.einsum("bi,io->bo", x, self.w[...])


class NNXStack(nnx.Module):

  def __init__(self, rngs, remat=False):
    self.remat = remat

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return nnx.Linear(4, 4, rngs=rngs)

    self.layers = make(rngs)

  def __call__(self, x):

    def body(layer, x):
      return jnp.tanh(layer(x))

    body = nnx.remat(body) if self.remat else body
    return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)(self.layers, x)


class NNXAttention(nnx.Module):

  def __init__(self, rngs):
    self.mha = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                                      rngs=rngs)

  def __call__(self, x):
    return self.mha(x)


def _nnx_served_equals_fake(cm, x):
  cm.eval()
  fake = cm(x)
  served = cj.export(cm)
  np.testing.assert_allclose(np.asarray(served(x)), np.asarray(fake), atol=1e-5, rtol=1e-5)
  return served


def test_calibrate_updates_statistics_and_keeps_the_weights_of_custom_and_scanned_layers():
  # A custom einsum layer with its own parameter and scanned stacks, Linen and NNX: compress
  # and calibrate keep the parameter arrays themselves (no copy through jit), and calibration
  # moves the static ranges.
  static = [Rule(pattern=".", weight=Uniform(bits=4, dynamic=False, granularity=PER_CHANNEL),
                 act=Uniform(bits=8, dynamic=False, symmetric=False, calibration="minmax"))]
  x, batches = _x((2, 4)), [3.0 * _x((8, 4), seed=s) for s in (2, 3)]
  same = lambda a, b: all(u is v for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  moved = lambda a, b: any(not np.array_equal(u, v)
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  float_model = ScanModel()
  model = compress(float_model, static)
  variables = cj.init_from(model, float_model.init(jax.random.key(0), x), x)
  calibrated = cj.calibrate(model, variables, batches)
  assert same(calibrated["params"], variables["params"])
  assert moved(calibrated[cj.core.STATS], variables[cj.core.STATS])
  for nnx_model in (NNXCustom, NNXStack):
    m = nnx_model(nnx.Rngs(0))
    weights = nnx.state(m, nnx.Param)
    cm = compress(m, static, x)
    assert same(nnx.state(m, nnx.Param), weights), nnx_model.__name__
    stats = jax.tree.map(np.asarray, nnx.state(cm, cj.core.QuantStat))
    cj.calibrate(cm, None, batches)
    assert same(nnx.state(cm, nnx.Param), weights), nnx_model.__name__
    assert moved(nnx.state(cm, cj.core.QuantStat), stats), nnx_model.__name__


def test_nnx_custom_layer_trains_and_serves():
  model, x = NNXCustom(nnx.Rngs(0)), _x((6, 4))
  cm = compress(model, CATCH_ALL, x)
  assert [s.name for s in discover(model, x)] == ["w", "head/kernel"]
  opt = nnx.Optimizer(cm, optax.adam(1e-2), wrt=nnx.Param)
  y = jnp.arange(6) % 3

  @nnx.jit
  def step(cm, opt):
    def loss(cm):
      return optax.softmax_cross_entropy_with_integer_labels(cm(x), y).mean()

    value, grads = nnx.value_and_grad(loss)(cm)
    opt.update(cm, grads)
    return value

  losses = [float(step(cm, opt)) for _ in range(10)]
  assert losses[-1] < losses[0]
  assert float(cm.site_params["w"]["weight"]["step"][...].mean()) > 0
  served = _nnx_served_equals_fake(cm, x)
  assert isinstance(served.served["w"]["weight"].get_value(), QArray)
  features = cm.features(x)  # another method, under compression
  assert not np.allclose(features, jnp.einsum("bi,io->bo", x, model.w[...]))


def _autodiff_lsq(v, step, lo, hi, g=1.0):
  """LSQ by autodiff through the straight-through pieces, the reference for fake_quant's VJP."""
  s = ste.grad_scale(step, g)
  return ste.round_ste(ste.clip(v / s, lo, hi)) * s


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_lsq_gradients_equal_autodiff_on_custom_and_scanned_layers(api, monkeypatch):
  """Every gradient (weights and stacked per-layer steps) of the custom einsum layer + nn.scan
  stack, and of the NNX custom layer, is autodiff's through the straight-through pieces."""
  x, y = _x((8, 4)), jnp.arange(8) % 3
  xent = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  if api == "linen":
    model = compress(ScanModel(), CATCH_ALL)
    variables = model.init(jax.random.key(0), x)
    grad = lambda: jax.jit(jax.grad(lambda p: xent(model.apply({**variables, "params": p}, x))))(
        variables["params"])
  else:
    cm = compress(NNXCustom(nnx.Rngs(0)), CATCH_ALL, x)
    grad = lambda: nnx.state(nnx.jit(nnx.grad(lambda m: xent(m(x))))(cm))
  fused = grad()
  monkeypatch.setattr(lsq_module, "fake_quant", _autodiff_lsq)
  reference = grad()
  assert jax.tree.structure(fused) == jax.tree.structure(reference)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))))
  if api == "linen":
    assert fused[SITE_PARAMS]["stack"]["Dense_0"]["kernel"]["weight"]["step"].shape == (3, 1, 6)


@pytest.mark.parametrize("remat", [False, True])
def test_nnx_scanned_stack_serves(remat):
  # Remat'd, the scan body returns the layers' parameters as outputs: serving leaves them out.
  model, x = NNXStack(nnx.Rngs(0), remat=remat), _x((3, 4))
  cm = compress(model, CATCH_ALL, x)
  assert cm.site_params["layers"]["kernel"]["weight"]["step"].shape == (3, 1, 4)
  _nnx_served_equals_fake(cm, x)


def test_nnx_attention_products():
  model, x = NNXAttention(nnx.Rngs(0)), _x((2, 5, 8))
  rules = [Rule(pattern="dot_general", act=A8, rhs=A8), *CATCH_ALL]
  cm = compress(model, rules, x)
  assert set(cm.site_params["mha"]) >= {"dot_general#0", "dot_general#1", "query"}
  _nnx_served_equals_fake(cm, x)
