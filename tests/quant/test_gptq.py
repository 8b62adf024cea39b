"""GPTQ against round-to-nearest on a layer with correlated inputs, and against the sequential
OBS update it batches; grid, groups, dead inputs, Hessian accumulation and argument errors."""

import numpy as np
import pytest

from compressjax.quant.gptq import dequantize, gptq_quantize, hessian_from_inputs, rtn_quantize

K, N = 64, 32


@pytest.fixture(scope="module")
def layer():
  """A (64, 32) weight and 256 inputs whose features are correlated and unevenly scaled."""
  rng = np.random.default_rng(0)
  mix = np.eye(K) + 0.5 * rng.normal(size=(K, K)) / np.sqrt(K)
  x = (rng.normal(size=(256, K)) @ mix * np.exp(rng.normal(size=K))).astype(np.float32)
  return x, rng.normal(size=(K, N)).astype(np.float32)


def _output_error(x, w, quantized) -> float:
  return float(np.sum((x @ w - x @ np.asarray(dequantize(*quantized))) ** 2))


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [None, 16])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rtn(layer, bits, group_size, act_order):
  x, w = layer
  gptq = gptq_quantize(w, hessian_from_inputs(x), bits=bits, group_size=group_size,
                       act_order=act_order)
  rtn = rtn_quantize(w, bits=bits, group_size=group_size)
  assert _output_error(x, w, gptq) < 0.9 * _output_error(x, w, rtn)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_codes_scales_and_dequantization(layer, symmetric, act_order):
  x, w = layer
  codes, scale, zero = gptq_quantize(w, hessian_from_inputs(x), bits=3, group_size=16,
                                     act_order=act_order, symmetric=symmetric)
  codes, scale = np.asarray(codes), np.asarray(scale)
  assert codes.shape == (K, N) and codes.dtype == np.int32 and scale.shape == (K // 16, N)
  lo, hi = (-3, 3) if symmetric else (0, 7)
  assert codes.min() >= lo and codes.max() <= hi and (scale > 0).all()
  if symmetric:
    assert zero is None
    expected = codes * np.repeat(scale, 16, axis=0)
  else:
    zero = np.asarray(zero)
    assert zero.shape == (K // 16, N) and (zero == np.round(zero)).all()
    expected = (codes - np.repeat(zero, 16, axis=0)) * np.repeat(scale, 16, axis=0)
  np.testing.assert_allclose(dequantize(codes, scale, zero), expected, rtol=1e-6)


def _sequential_obs(w, h, bits, damp=0.01):
  """Reference in float64: quantize rows in order and update the rest with the inverse Hessian
  of the remaining rows, removing each row from it after use (Frantar et al., eqs. 2-3)."""
  h = h + damp * np.mean(np.diag(h)) * np.eye(len(h))
  qmax = 2 ** (bits - 1) - 1
  scale = np.maximum(np.abs(w).max(axis=0) / qmax, 1e-12)
  w, h_inv, codes = w.astype(np.float64), np.linalg.inv(h), np.zeros(w.shape, np.int64)
  for k in range(len(w)):
    codes[k] = np.clip(np.round(w[k] / scale), -qmax, qmax)
    e = (w[k] - codes[k] * scale) / h_inv[k, k]
    w -= np.outer(h_inv[:, k], e)
    h_inv -= np.outer(h_inv[:, k], h_inv[k]) / h_inv[k, k]
  return codes


def test_blocked_cholesky_gptq_matches_the_sequential_update(layer):
  x, w = layer
  h = np.asarray(hessian_from_inputs(x), np.float64)
  reference = _sequential_obs(w, h, bits=4)
  for block_size in (16, 128):
    codes = np.asarray(gptq_quantize(w, h, bits=4, block_size=block_size)[0])
    assert np.mean(codes != reference) < 0.01  # float32 round-off flips a rare tie


def test_dead_inputs_give_zero_rows(layer):
  x, w = layer
  x = x.copy()
  x[:, [3, 40]] = 0.0
  codes, scale, _ = gptq_quantize(w, hessian_from_inputs(x), bits=4, act_order=True)
  assert np.isfinite(np.asarray(scale)).all()
  np.testing.assert_array_equal(np.asarray(codes)[[3, 40]], 0)


def test_hessian_flattens_leading_axes_and_accumulates(layer):
  x, _ = layer
  h = hessian_from_inputs(x[:100].reshape(4, 25, K))
  h = hessian_from_inputs(x[100:], h)
  np.testing.assert_allclose(h, 2 * x.T.astype(np.float64) @ x, rtol=1e-4, atol=1e-2)


def test_bad_arguments_name_the_value(layer):
  x, w = layer
  h = hessian_from_inputs(x)
  for kwargs, message in [({"bits": 1}, "bits=1"), ({"bits": 9}, "bits=9"),
                          ({"bits": 4, "group_size": 12}, "group_size=12 .* K=64"),
                          ({"bits": 4, "group_size": 0}, "group_size=0"),
                          ({"bits": 4, "block_size": 0}, "block_size=0"),
                          ({"bits": 4, "damp": -1.0}, "damp=-1.0")]:
    with pytest.raises(ValueError, match=message):
      gptq_quantize(w, h, **kwargs)
  with pytest.raises(ValueError, match=r"hessian has shape \(32, 32\)"):
    gptq_quantize(w, h[:32, :32], bits=4)
  with pytest.raises(ValueError, match="group_size=7"):
    rtn_quantize(w, bits=4, group_size=7)
