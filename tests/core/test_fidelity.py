"""core.fidelity: how close a compressed model starts to float, and the warning when it is not."""

import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

from compressjax.core import FidelityWarning, Rule, check_fidelity, compress, fidelity, init_from
from compressjax.quant.uniform import Uniform


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def test_identical_outputs_agree_fully_without_a_warning():
  logits = np.random.default_rng(0).standard_normal((16, 10))
  with warnings.catch_warnings():
    warnings.simplefilter("error", FidelityWarning)
    assert check_fidelity(logits, logits, what="same") == {"top1_agreement": 1.0,
                                                           "relative_error": 0.0}


def test_an_eight_bit_init_from_float_stays_close():
  x = np.random.default_rng(1).standard_normal((64, 12)).astype(np.float32)
  model = _MLP()
  float_vars = model.init(jax.random.key(0), x)
  qmodel = compress(model, [Rule(pattern=".*", weight=Uniform(bits=8),
                                 act=Uniform(bits=8, dynamic=False))])
  qvars = init_from(qmodel, float_vars, x)
  result = fidelity(model.apply(float_vars, x), qmodel.apply(qvars, x))
  assert result["top1_agreement"] >= 0.95 and 0 < result["relative_error"] < 0.02, result


def test_far_outputs_warn_with_the_numbers():
  rng = np.random.default_rng(2)
  reference = rng.standard_normal((40, 10))
  compressed = reference.copy()
  compressed[:20] = rng.standard_normal((20, 10))  # about half the predictions change
  agreement = float(np.mean(reference.argmax(-1) == compressed.argmax(-1)))
  with pytest.warns(FidelityWarning, match=rf"conv W2A2: .* {100 * agreement:.1f}% of top-1 .* "
                                           r"over 40 examples"):
    result = check_fidelity(reference, compressed, what="conv W2A2")
  assert result["top1_agreement"] == agreement < 0.9


def test_non_finite_outputs_warn_and_shapes_must_match():
  reference = np.ones((4, 3))
  with pytest.warns(FidelityWarning, match="relative output error nan"):
    check_fidelity(reference, np.full((4, 3), np.nan), what="nan model")
  with pytest.raises(ValueError, match=r"float \(4, 3\), compressed \(4, 2\)"):
    fidelity(reference, np.ones((4, 2)))
