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
  serving_model, serving_vars = export(model, variables, backend="reference")
  for site in ("conv", "deconv", "proj", "mix", "head"):
    assert isinstance(serving_vars["params"][site]["kernel"], QArray)
    assert not any(k.startswith("kernel_") for k in serving_vars["params"][site])
  expected = model.apply(variables, toy_input)
  served = jax.jit(serving_model.apply)(serving_vars, toy_input)
  scale = float(jnp.max(jnp.abs(expected))) + 1e-6
  assert _max_err(expected, served) <= 1e-5 * scale


def test_export_equals_fake_quant_per_group(toy_net, toy_input):
  quantizer = Uniform(bits=4, granularity=gr.per_group(4))
  model = cc.compress(toy_net, [cc.Rule(pattern="proj|mix|head", weight=quantizer)])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, serving_vars = export(model, variables, backend="reference")
  assert serving_vars["params"]["proj"]["kernel"].scale.shape == (100 // 4, 8)
  np.testing.assert_allclose(
      serving_model.apply(serving_vars, toy_input), model.apply(variables, toy_input), rtol=1e-5, atol=1e-5
  )


def test_bad_group_size_error_names_the_layer(toy_net, toy_input):
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=Uniform(bits=4, granularity=gr.per_group(4)))])
  with pytest.raises(ValueError, match="site 'conv' \\(Conv kernel of shape \\(3, 3, 1, 4\\)\\).*group_size=4"):
    model.init(jax.random.key(0), toy_input)


@pytest.mark.parametrize("method", METHODS)
def test_exported_cnn_matches_fake_quant_and_is_smaller(method):
  from compressjax.models import CNN

  model = CNN(widths=(8, 16), hidden=32)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  float_vars = model.init(jax.random.key(1), x)
  qmodel = cc.compress(model, recipe_rules(method, cc.discover(model, x), w_bits=4, a_bits=4))
  variables = cc.init_from(qmodel, float_vars, x, train=False)
  serving_model, serving_vars = export(qmodel, variables, backend="xla")
  expected = qmodel.apply(variables, x)
  served = serving_model.apply(serving_vars, x)
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
  assert size_report(serving_vars).total_bytes < 0.4 * size_report(float_vars).total_bytes


def test_export_refuses_plain_models_and_serving_refuses_float_kernels(toy_net, toy_input):
  with pytest.raises(TypeError, match="compressed model"):
    export(toy_net, {})
  model = cc.compress(toy_net, [cc.Rule(pattern=".", weight=LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  serving_model, _ = export(model, variables)
  with pytest.raises(ValueError, match="serving expects an exported QArray"):
    serving_model.apply(variables, toy_input)


def test_size_report_counts_packed_bytes(toy_net, toy_input):
  model = cc.compress(toy_net, [cc.Rule(pattern="^mix$", weight=LSQ(bits=4))])
  variables = model.init(jax.random.key(0), toy_input)
  _, serving_vars = export(model, variables)
  report = size_report(serving_vars)
  q = serving_vars["params"]["mix"]["kernel"]
  assert report.per_leaf["params/mix/kernel"] == q.nbytes == 8 * 8 // 2 + 4
  assert report.qarray_bytes == q.nbytes
  assert report.total_bytes == report.qarray_bytes + report.float_bytes


def test_static_quantizer_without_calibration_is_refused_then_calibration_fixes_it(toy_net, toy_input):
  static = Uniform(bits=8, signed=False, symmetric=False, calibration="minmax", dynamic=False)
  model = cc.compress(toy_net, [cc.Rule(pattern="head", act=static)])
  variables = model.init(jax.random.key(0), toy_input)
  with pytest.raises(ValueError, match="site 'head'.*never calibrated"):
    model.apply(variables, toy_input)
  calibrated = cc.calibrate(model, variables, [toy_input])
  assert model.apply(calibrated, toy_input).shape == (2, 3)
