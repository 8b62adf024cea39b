"""export(): serving outputs equal fake-quant outputs for every weight quantizer."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax.core as cc
from compressjax.export import export, size_report
from compressjax.quant import granularity as gr
from compressjax.quant.dorefa import DoReFa
from compressjax.quant.lsq import LSQ
from compressjax.qarray import QArray
from compressjax.quant.recipes import METHODS, recipe_rules
from compressjax.quant.sat import SAT
from compressjax.quant.uniform import Uniform

export_lib = sys.modules["compressjax.export"]  # the package's `export` is the function

WEIGHT_QUANTIZERS = [
    DoReFa(bits=1, kind="weight"),
    DoReFa(bits=3, kind="weight"),
    LSQ(bits=4, kind="weight", granularity=gr.PER_CHANNEL),
    SAT(bits=2, kind="weight"),
    SAT(bits=5, kind="weight", grid="centered"),
    Uniform(bits=8, symmetric=False, signed=False),
]


def _max_err(a, b):
  return float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("quantizer", WEIGHT_QUANTIZERS, ids=repr)
def test_export_equals_fake_quant_at_every_site_kind(quantizer, toy_net, toy_input):
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=quantizer)])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = export(model, variables, toy_input, backend="reference")
  for site in ("conv", "deconv", "proj", "mix", "head"):
    assert isinstance(serving_vars["served"][site]["kernel"]["weight"], QArray)
    assert "kernel" not in serving_vars["params"][site]
  expected = model.apply(variables, toy_input)
  served = jax.jit(serving_model.apply)(serving_vars, toy_input)
  scale = float(jnp.max(jnp.abs(expected))) + 1e-6
  assert _max_err(expected, served) <= 1e-5 * scale


@pytest.mark.parametrize("quantizer", WEIGHT_QUANTIZERS[2:], ids=repr)
def test_compiled_site_export_writes_the_eager_codes(quantizer, toy_net, toy_input, monkeypatch,
                                                     assert_same_export):
  """Sites above ``COMPILE_MIN_SIZE`` export through one compiled function: the same codes as op
  by op, and scales to an ulp (SAT's std divides differently when fused); here every site is
  compiled by lowering the threshold to 0."""
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=quantizer)])
  variables = model.init(jax.random.key(0), toy_input)
  eager = export(model, variables, toy_input)[1]["served"]
  monkeypatch.setattr(export_lib, "COMPILE_MIN_SIZE", 0)
  assert_same_export(export(model, variables, toy_input)[1]["served"], eager)


def test_export_equals_fake_quant_per_group(toy_net, toy_input):
  quantizer = Uniform(bits=4, granularity=gr.per_group(4))
  model = cc.compress(toy_net, [cc.Rule(pattern="proj|mix|head", weight=quantizer)])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = export(model, variables, toy_input, backend="reference")
  assert serving_vars["served"]["proj"]["kernel"]["weight"].scale.shape == (100 // 4, 8)
  np.testing.assert_allclose(
      serving_model.apply(serving_vars, toy_input), model.apply(variables, toy_input), rtol=1e-5, atol=1e-5
  )


def test_bad_group_size_error_names_the_layer(toy_net, toy_input):
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=Uniform(bits=4, granularity=gr.per_group(4)))])
  with pytest.raises(ValueError, match="site 'conv/kernel' \\(conv_general_dilated weight of shape \\(3, 3, 1, 4\\)\\).*group_size=4"):
    model.init(jax.random.key(0), toy_input)


@pytest.mark.parametrize("method", METHODS)
def test_exported_cnn_matches_fake_quant_and_is_smaller(method):
  from compressjax.models import CNN

  model = CNN(widths=(8, 16), hidden=32)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  float_vars = model.init(jax.random.key(1), x)
  qmodel = cc.compress(model, recipe_rules(method, cc.discover(model, x), w_bits=4, a_bits=4))
  variables = cc.init_from(qmodel, float_vars, x, train=False)
  serving_model, serving_vars = export(qmodel, variables, x, backend="xla")
  expected = qmodel.apply(variables, x)
  served = serving_model.apply(serving_vars, x)
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
  assert size_report(serving_vars).total_bytes < 0.4 * size_report(float_vars).total_bytes


def test_export_refuses_plain_models_and_serving_refuses_float_kernels(toy_net, toy_input):
  with pytest.raises(TypeError, match="compressed model"):
    export(toy_net, {})
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  with pytest.raises(TypeError, match="example_inputs"):
    export(model, variables)


def test_size_report_counts_packed_bytes(toy_net, toy_input):
  model = cc.compress(toy_net, [cc.Rule(pattern="^mix$", weight=LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  _, serving_vars = export(model, variables, toy_input)
  report = size_report(serving_vars)
  q = serving_vars["served"]["mix"]["kernel"]["weight"]
  assert report.per_leaf["served/mix/kernel/weight"] == q.nbytes == 8 * 8 // 2 + 4
  assert report.qarray_bytes == q.nbytes
  assert report.total_bytes == report.qarray_bytes + report.float_bytes


def test_static_quantizer_without_calibration_is_refused_then_calibration_fixes_it(toy_net, toy_input):
  static = Uniform(bits=8, signed=False, symmetric=False, calibration="minmax", dynamic=False)
  model = cc.compress(toy_net, [cc.Rule(pattern="head", act=static)])
  variables = model.init(jax.random.key(0), toy_input)
  with pytest.raises(ValueError, match="site 'head/kernel'.*never calibrated"):
    model.apply(variables, toy_input)
  calibrated = cc.calibrate(model, variables, [toy_input])
  assert model.apply(calibrated, toy_input).shape == (2, 3)


# ------------------------------------------------------------------------------------------------
# Integer serving paths (issue 13).

from compressjax.export import serving_paths  # noqa: E402
from compressjax.quant.pact import PACT  # noqa: E402


def _int_rules(weight, act):
  return [cc.Rule(pattern=".", weight=weight, act=act)]


@pytest.mark.parametrize("weight,act", [
    (LSQ(bits=8, granularity=gr.PER_CHANNEL), LSQ(bits=8, kind="activation", signed=True)),
    (DoReFa(bits=4, kind="weight"), PACT(bits=8, alpha_init=2.0)),  # zero points, unsigned codes
    (SAT(bits=4, kind="weight"), LSQ(bits=4, kind="activation", signed=False)),
], ids=["w8a8-lsq", "w4a8-dorefa-pact", "w4a4-sat-lsq"])
def test_integer_paths_equal_fake_quant_and_lower_to_s8_ops(weight, act, toy_input):
  from tests.conftest import ToyNet

  net = ToyNet()
  model = cc.compress(net, _int_rules(weight, act))
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = export(model, variables, toy_input)
  expected = model.apply(variables, toy_input)
  served = jax.jit(serving_model.apply)(serving_vars, toy_input)
  scale = float(jnp.max(jnp.abs(expected))) + 1e-6
  assert _max_err(expected, served) <= 1e-5 * scale
  paths = serving_paths(serving_model, serving_vars, toy_input)
  assert paths["conv/kernel"][0] == paths["deconv/kernel"][0] == "int8 conv"
  assert {paths[s][0] for s in ("proj/kernel", "mix/kernel", "head/kernel")} == {"int8 dot"}
  hlo = jax.jit(serving_model.apply).lower(serving_vars, toy_input).as_text()
  int_dots = [l for l in hlo.splitlines() if "dot_general" in l and "xi8>" in l and "xi32>" in l]
  int_convs = [l for l in hlo.splitlines() if "convolution" in l and "xi8>" in l]
  assert len(int_dots) >= 3 and int_convs
  float_dots = [l for l in hlo.splitlines() if "dot_general" in l and "xf32>" in l]
  assert not float_dots


def test_weight_only_sites_go_through_the_kernel(toy_input):
  from tests.conftest import ToyNet

  model = cc.compress(ToyNet(), [cc.Rule(pattern="proj|mix|head", weight=LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = export(model, variables, toy_input, backend="interpret")
  paths = serving_paths(serving_model, serving_vars, toy_input)
  assert {paths[s][0] for s in ("proj/kernel", "mix/kernel", "head/kernel")} == {"kernel"}
  np.testing.assert_allclose(serving_model.apply(serving_vars, toy_input),
                             model.apply(variables, toy_input), rtol=1e-5, atol=1e-5)


def test_nan_inputs_give_nan_in_the_same_outputs():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  model = cc.compress(nn.Dense(3), _int_rules(LSQ(bits=8), LSQ(bits=8, kind="activation",
                                                               signed=True)))
  x = jax.random.normal(jax.random.key(0), (4, 5)).at[1, 2].set(jnp.nan)
  variables = model.init(jax.random.key(0), jnp.nan_to_num(x))
  serving_model, serving_vars = export(model, variables, x)
  fake = model.apply(variables, x)
  served = np.asarray(serving_model.apply(serving_vars, x))
  np.testing.assert_array_equal(np.isnan(fake), np.isnan(served))
  assert np.isnan(served[1]).all() and not np.isnan(served[[0, 2, 3]]).any()


# ------------------------------------------------------------------------------------------------
# Served vs fake-quant: the int8 paths sum exactly, fake-quant in float; the bound (issue 13).

import flax.linen as nn  # noqa: E402

from compressjax.core.compress import SITE_PARAMS  # noqa: E402
from compressjax.export import site_agreement  # noqa: E402


class _Stack(nn.Module):
  """Dense layers with LayerNorm between them (``norm=False``: Dense straight into Dense)."""

  widths: tuple = (32, 32, 32, 8)
  norm: bool = True

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, use_bias=self.norm, name=f"dense{i}")(x)
      x = nn.LayerNorm(name=f"norm{i}")(x) if self.norm and i + 1 < len(self.widths) else x
    return x


def _w4a8(model, x):
  rules = [cc.Rule(pattern=".", weight=LSQ(bits=4), act=LSQ(bits=8, kind="activation",
                                                             signed=True))]
  qmodel = cc.compress(model, rules)
  return qmodel, cc.init_from(qmodel, model.init(jax.random.key(1), x), x)


def test_served_sites_equal_fake_quant_given_the_same_input_codes():
  x = jax.random.normal(jax.random.key(0), (64, 24))
  qmodel, variables = _w4a8(_Stack(), x)
  serving_model, serving_vars = export(qmodel, variables, x)
  agreement = site_agreement(serving_model, serving_vars, x)
  assert set(agreement) == {f"dense{i}/kernel" for i in range(4)}
  for site, e in agreement.items():
    assert e["same_input_rel_err"] <= 1e-5, site
    assert e["code_diff_max"] <= 1 and e["codes_differing"] <= 1e-3 * e["codes"], site
  assert agreement["dense0/kernel"]["codes_differing"] == 0  # the network input itself
  expected = qmodel.apply(variables, x)
  assert _max_err(serving_model.apply(serving_vars, x), expected) <= 1e-5 * float(
      jnp.max(jnp.abs(expected)))


def test_only_codes_on_an_exact_rounding_tie_flip_and_by_one():
  """Steps chosen so the next quantizer's exact input is acc / 100 (acc = the integer sum of
  code products): codes with acc = 50 mod 100 sit on a tie, which the exact int32 sum and the
  float fake-quant sum may round apart. Exactly those, and by one code, may differ."""
  x = jax.random.normal(jax.random.key(0), (256, 48))
  qmodel, variables = _w4a8(_Stack(widths=(32, 8), norm=False), x)
  steps = variables["params"][SITE_PARAMS]
  sx, sw = jnp.float32(0.1), jnp.float32(0.03)
  steps = {"dense0": {"kernel": {"input": {"step": sx}, "weight": {"step": sw}}},
           "dense1": {"kernel": {**steps["dense1"]["kernel"],
                                 "input": {"step": sx * sw * 100}}}}
  variables = {**variables, "params": {**variables["params"], SITE_PARAMS: steps}}
  serving_model, serving_vars = export(qmodel, variables, x)
  agreement = site_agreement(serving_model, serving_vars, x)
  first, second = agreement["dense0/kernel"], agreement["dense1/kernel"]
  assert first["codes_differing"] == 0 and second["code_diff_max"] <= 1
  assert max(first["same_input_rel_err"], second["same_input_rel_err"]) <= 1e-5
  w = serving_vars["served"]["dense0"]["kernel"]["weight"]
  x_codes = jnp.clip(jnp.round(x / sx), -128, 127).astype(jnp.int32)
  acc = x_codes @ w.codes()
  ties = int(jnp.sum(jnp.abs(acc) % 100 == 50))
  assert second["codes_differing"] <= ties < 0.05 * second["codes"]


class _TokenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16, name="a")(x))
    x = nn.DenseGeneral((2, 8), name="b")(x)
    return nn.DenseGeneral(5, axis=(-2, -1), name="c")(x)  # contracts two axes: not per row


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "zero-point"])
def test_per_token_dynamic_scales_run_on_the_int8_dot(symmetric):
  from compressjax.quant.granularity import PER_TOKEN  # pylint: disable=g-import-not-at-top

  x = jax.random.normal(jax.random.key(0), (3, 4, 12)) * jnp.arange(1, 13)  # rows differ
  act = Uniform(bits=8, granularity=PER_TOKEN, dynamic=True, symmetric=symmetric, signed=None)
  model = cc.compress(_TokenNet(), [cc.Rule(pattern=".", weight=LSQ(
      bits=8, granularity=gr.PER_CHANNEL), act=act)])
  variables = cc.init_from(model, _TokenNet().init(jax.random.key(1), x), x)
  serving_model, serving_vars = export(model, variables, x)
  paths = serving_paths(serving_model, serving_vars, x)
  assert paths["a/kernel"][0] == paths["b/kernel"][0] == "int8 dot"
  assert paths["c/kernel"][0] == "kernel" and "per-token" in paths["c/kernel"][1]
  hlo = jax.jit(serving_model.apply).lower(serving_vars, x).as_text()
  assert len([l for l in hlo.splitlines() if "dot_general" in l and "xi8>" in l]) == 2
  for site, e in site_agreement(serving_model, serving_vars, x).items():
    assert e["same_input_rel_err"] <= 1e-5, site
  if symmetric:  # end to end too (zero-point rows' ranges move by an ulp and can flip a code)
    expected = model.apply(variables, x)
    assert _max_err(serving_model.apply(serving_vars, x), expected) <= 1e-5 * float(
        jnp.max(jnp.abs(expected)))
