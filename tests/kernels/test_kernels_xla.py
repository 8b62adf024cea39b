"""The fusable XLA fallback (planes contracted in one dot_general) against the reference."""

import jax
import jax.numpy as jnp
import pytest

from compressjax.kernels import weight_only_reference, weight_only_xla


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 12])
@pytest.mark.parametrize("group_size, zero_point", [(None, True), (32, False), (64, True)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_reference(make_qarray, normal, close, bits, group_size, zero_point, dtype):
  # K=192 leaves padded rows in the last plane of 2/4-bit weights with groups of 32/64.
  w = make_qarray(bits, 192, 40, bits=bits, group_size=group_size, zero_point=zero_point,
                  signed=bits != 2)
  x = normal((3, 192), dtype, seed=bits)
  y = jax.jit(weight_only_xla)(x, w)
  assert y.shape == (3, 40) and y.dtype == dtype
  close(y, weight_only_reference(x, w), dtype)


def test_one_dot_reads_the_planes(make_qarray, normal):
  # No (K, N) concatenate of planes: the dot contracts (plane, row) of x viewed as (M, per, P).
  w = make_qarray(0, 256, 64, bits=4, group_size=64)
  text = jax.jit(weight_only_xla).lower(normal((2, 256)), w).as_text()
  assert "concatenate" not in text and text.count("dot_general") == 1
  assert "contracting_dims = [1, 2] x [0, 1]" in text
