"""compress(): rules over unmodified Flax models, state placement, autodiff and transforms."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax.core as cc

SITES = ["conv", "deconv", "proj", "mix", "head"]


def shapes(tree):
  return jax.tree_util.tree_map(jnp.shape, tree)


def test_discover_lists_every_site_in_call_order(toy_net, toy_input):
  sites = cc.discover(toy_net, toy_input)
  assert [s.path for s in sites] == SITES
  assert sites[0].kind == "Conv" and sites[0].kernel_shape == (3, 3, 1, 4)
  assert sites[-1].input_shape == (2, 8)


def test_compressed_model_keeps_class_fields_and_param_tree(toy_net, toy_input, toy_quantizer):
  q = toy_quantizer(bits=4)
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=q, act=q)])
  assert isinstance(cm, type(toy_net)) and cm.width == toy_net.width
  v = cm.init(jax.random.key(0), toy_input)
  fv = toy_net.init(jax.random.key(0), toy_input)
  # The float tree is a subtree: same names and shapes, plus kernel_*/input_* entries.
  for site in SITES:
    assert shapes(v["params"][site])["kernel"] == shapes(fv["params"][site])["kernel"]
    assert set(v["params"][site]) == set(fv["params"][site]) | {"kernel_step", "input_step"}
    assert set(v[cc.STATS][site]) == {"kernel_calls", "input_calls"}
  assert cc.uncompressed(cm) == toy_net


def test_every_site_kind_is_quantized(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=toy_quantizer(bits=2))])
  v = cm.init(jax.random.key(0), toy_input)
  out_q = cm.apply(v, toy_input)
  # Replacing each kernel by its own fake-quantized value in the float model gives the same output.
  params = dict(v["params"])
  q = toy_quantizer(bits=2)
  for site in SITES:
    p = dict(params[site])
    p["kernel"] = q.fake(p.pop("kernel"), {"step": p.pop("kernel_step")}, {})
    params[site] = p
  out_ref = toy_net.apply({"params": params, "batch_stats": v["batch_stats"]}, toy_input)
  np.testing.assert_allclose(out_q, out_ref, rtol=1e-5, atol=1e-5)


def test_first_matching_rule_wins_and_float_rule_keeps_layer(toy_net, toy_input, toy_quantizer):
  q4, q8 = toy_quantizer(bits=4), toy_quantizer(bits=8)
  rules = [cc.Rule(pattern="^head$"), cc.Rule(pattern="conv", weight=q8), cc.Rule(pattern=".", weight=q4)]
  cm = cc.compress(toy_net, rules)
  v = cm.init(jax.random.key(0), toy_input)
  assert "kernel_step" not in v["params"]["head"]
  assert cm.compression.rule_for("deconv").weight == q8  # "conv" is found inside "deconv"
  assert cm.compression.rule_for("proj").weight == q4


def test_unused_rule_is_reported_at_init(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern="^typo$", weight=toy_quantizer()), cc.Rule(pattern=".")])
  with pytest.warns(cc.UnusedRuleWarning, match="'\\^typo\\$' matched no site"):
    cm.init(jax.random.key(0), toy_input)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    cc.compress(toy_net, [cc.Rule(pattern=".")]).init(jax.random.key(0), toy_input)


def test_bad_rules_are_refused(toy_net):
  with pytest.raises(ValueError, match="not a valid regular expression"):
    cc.Rule(pattern="conv[")
  with pytest.raises(TypeError, match="rules\\[0\\]"):
    cc.compress(toy_net, ["conv"])
  with pytest.raises(TypeError, match="flax.linen.Module"):
    cc.compress(lambda x: x, [])


def test_gradients_reach_kernels_and_quantizer_params_under_jit(toy_net, toy_input, toy_quantizer):
  q = toy_quantizer(bits=4)
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=q, act=q)])
  v = cm.init(jax.random.key(0), toy_input)

  @jax.jit
  def grads(params):
    def loss(p):
      out, _ = cm.apply({**v, "params": p}, toy_input, train=True, mutable=["batch_stats", cc.STATS])
      return jnp.sum(out**2)

    return jax.grad(loss)(params)

  g = grads(v["params"])
  for site in SITES:
    assert float(jnp.abs(g[site]["kernel"]).sum()) > 0
    assert float(jnp.abs(g[site]["kernel_step"])) > 0
  assert float(jnp.abs(g["proj"]["input_step"])) > 0


def test_vmap_over_examples_matches_batched_apply(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=toy_quantizer(bits=4))])
  v = cm.init(jax.random.key(0), toy_input)
  batched = cm.apply(v, toy_input)
  mapped = jax.vmap(lambda x: cm.apply(v, x[None])[0])(toy_input)
  np.testing.assert_allclose(batched, mapped, rtol=1e-5, atol=1e-6)


def test_stats_update_only_when_collection_is_mutable(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", act=toy_quantizer())])
  v = cm.init(jax.random.key(0), toy_input)
  assert float(v[cc.STATS]["head"]["input_calls"]) == 0
  cm.apply(v, toy_input)  # read-only: no error, nothing written
  _, upd = cm.apply(v, toy_input, mutable=[cc.STATS])
  assert float(upd[cc.STATS]["head"]["input_calls"]) == 1
  v2 = cc.calibrate(cm, v, [toy_input] * 3)
  assert float(v2[cc.STATS]["mix"]["input_calls"]) == 3


def test_calibrate_refuses_empty_data(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", act=toy_quantizer())])
  v = cm.init(jax.random.key(0), toy_input)
  with pytest.raises(ValueError, match="at least one batch"):
    cc.calibrate(cm, v, [])


def test_init_from_float_keeps_weights_and_initialises_quantizers_from_them(toy_net, toy_input, toy_quantizer):
  q = toy_quantizer(bits=4)
  fv = toy_net.init(jax.random.key(3), toy_input)
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=q)])
  v = cc.init_from(cm, fv, toy_input, train=False)
  for site in SITES:
    np.testing.assert_array_equal(v["params"][site]["kernel"], fv["params"][site]["kernel"])
    expected = q.init(fv["params"][site]["kernel"])[0]["step"]
    np.testing.assert_allclose(v["params"][site]["kernel_step"], expected, rtol=1e-6)


def test_chain_composes_and_namespaces_state(toy_net, toy_input, toy_quantizer):
  q8, q2 = toy_quantizer(bits=8), toy_quantizer(bits=2)
  c = cc.chain(q8, q2)
  x = jnp.linspace(-1, 1, 17)
  p, s = c.init(x)
  assert set(p) == {"0_step", "1_step"} and set(s) == {"0_calls", "1_calls"}
  y = c.fake(x, p, s)
  expected = q2.fake(q8.fake(x, {"step": p["0_step"]}, {}), {"step": p["1_step"]}, {})
  np.testing.assert_allclose(y, expected)
  assert len(np.unique(np.asarray(y))) <= 4
  s2 = c.update(x, p, s)
  assert float(s2["1_calls"]) == 1
  with pytest.raises(TypeError, match="chain argument 1"):
    cc.chain(q8, "not a transform")


def test_param_labels_separate_quantizer_state(toy_net, toy_input, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=toy_quantizer(), act=toy_quantizer())])
  v = cm.init(jax.random.key(0), toy_input)
  labels = cc.param_labels(v["params"])
  assert labels["conv"] == {"kernel": "model", "bias": "model", "kernel_step": "quantizer", "input_step": "quantizer"}
  assert labels["bn"] == {"scale": "model", "bias": "model"}


def test_with_edges_pins_first_and_last_site(toy_net, toy_input, toy_quantizer):
  q4, q8 = toy_quantizer(bits=4), toy_quantizer(bits=8)
  sites = cc.discover(toy_net, toy_input)
  rules = cc.with_edges([cc.Rule(pattern=".", weight=q4)], sites, first=None, last=cc.Rule(pattern="", weight=q8))
  spec = cc.compress(toy_net, rules).compression
  assert spec.rule_for("conv").is_float
  assert spec.rule_for("head").weight == q8
  assert spec.rule_for("mix").weight == q4


def test_compressed_model_is_hashable_for_jit_static_use(toy_net, toy_quantizer):
  cm = cc.compress(toy_net, [cc.Rule(pattern=".", weight=toy_quantizer())])
  assert hash(cm.compression) == hash(cc.compress(toy_net, [cc.Rule(pattern=".", weight=toy_quantizer())]).compression)


def test_module_defined_with_setup_is_supported(toy_input, toy_quantizer):
  class SetupNet(nn.Module):
    def setup(self):
      self.body = nn.Dense(5)
      self.out = nn.Dense(2)

    def __call__(self, x):
      return self.out(nn.relu(self.body(x.reshape(x.shape[0], -1))))

  cm = cc.compress(SetupNet(), [cc.Rule(pattern="body", weight=toy_quantizer(bits=3))])
  v = cm.init(jax.random.key(0), toy_input)
  assert "kernel_step" in v["params"]["body"] and "kernel_step" not in v["params"]["out"]
