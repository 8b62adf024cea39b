"""export(): serving outputs equal fake-quant outputs for every weight quantizer."""

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
