"""Granularity: views, reductions, QArray canonical shapes and bad group sizes."""

import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.quant import PER_CHANNEL, PER_TENSOR, PER_TOKEN, Granularity, per_group

W = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5) - 60.0


def test_reduction_shapes_broadcast_back_onto_the_view():
  for g, shape in [
      (PER_TENSOR, ()),
      (PER_CHANNEL, (1, 1, 1, 5)),
      (per_group(4), (6, 1, 5)),
      (PER_TOKEN, (2, 3, 4, 1)),
  ]:
    v = g.view(W)
    for op in ("absmax", "min", "max", "mean_abs", "std"):
      stat = g.reduce(v, op)
      assert stat.shape == shape, (g, op)
      assert jnp.broadcast_shapes(stat.shape, v.shape) == v.shape
    np.testing.assert_array_equal(g.unview(v, W.shape), W)


def test_group_rows_are_consecutive_rows_of_the_matrix_view():
  g = per_group(4)
  absmax = g.reduce(g.view(W), "absmax")
  mat = np.asarray(W).reshape(24, 5)
  np.testing.assert_array_equal(absmax[:, 0, :], np.abs(mat).reshape(6, 4, 5).max(axis=1))
  assert g.to_qarray(absmax, W.shape).shape == (6, 5)


def test_channel_and_tensor_statistics_values_and_qarray_shapes():
  mat = np.asarray(W).reshape(24, 5)
  std = PER_CHANNEL.reduce(W, "std")
  np.testing.assert_allclose(std.reshape(5), mat.std(axis=0), rtol=1e-6)
  assert PER_CHANNEL.to_qarray(std, W.shape).shape == (1, 5)
  assert PER_TENSOR.to_qarray(PER_TENSOR.reduce(W, "max"), W.shape).shape == (1, 1)
  # A scalar is shared by every channel and group.
  assert per_group(4).to_qarray(jnp.float32(2.0), W.shape).shape == (1, 1)
  # Rank-1 tensors are one column of the (K, N) view: per channel falls back to per tensor.
  b = jnp.arange(6.0)
  assert PER_CHANNEL.to_qarray(PER_CHANNEL.reduce(b, "max"), b.shape).shape == (1, 1)


def test_per_stat_counts():
  assert PER_TENSOR.per_stat(W.shape) == 120
  assert PER_CHANNEL.per_stat(W.shape) == 24
  assert per_group(4).per_stat(W.shape) == 4
  assert PER_TOKEN.per_stat(W.shape) == 5


def test_group_size_not_dividing_k_names_shape_and_group_size():
  with pytest.raises(ValueError, match=r"group_size=5 does not divide K=24 .*\(2, 3, 4, 5\)"):
    per_group(5).view(W)


def test_bad_configs_and_token_export_are_refused():
  with pytest.raises(ValueError, match="kind='row'"):
    Granularity(kind="row")
  with pytest.raises(ValueError, match="group_size=0"):
    per_group(0)
  with pytest.raises(ValueError, match="only allowed with kind='group'"):
    Granularity(kind="channel", group_size=4)
  with pytest.raises(ValueError, match="token"):
    PER_TOKEN.to_qarray(jnp.ones((2, 1)), (2, 3))
  with pytest.raises(ValueError, match="op='median'"):
    PER_TENSOR.reduce(W, "median")
