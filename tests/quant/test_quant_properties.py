"""Hypothesis: every quantizer puts values on its grid with at most 2^b levels per scale, and
its integer export dequantizes to exactly what ``fake`` computes."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from compressjax.quant import (
    LSQ,
    PACT,
    PER_CHANNEL,
    PER_TENSOR,
    PER_TOKEN,
    SAT,
    DoReFa,
    FixedPoint,
    LSQPlus,
    Uniform,
    per_group,
)
from compressjax.qarray import code_range

SHAPES = [(8, 4), (2, 2, 4, 3), (16,)]  # dense kernel, conv kernel, vector; K = 8, 16, 16
BITS = st.sampled_from([1, 2, 3, 4, 8, 16])
SAT_GRIDS = ["modified", "centered"]
WEIGHT_GRANS = [PER_TENSOR, PER_CHANNEL, per_group(4)]


def _fits(q_cls, bits, **kw):
  """``q_cls(bits=bits, **kw)`` or None when ``bits`` is outside the class's range."""
  try:
    return q_cls(bits=bits, **kw)
  except ValueError as e:
    if "bits=" not in str(e):
      raise
    return None


@st.composite
def quantizer(draw):
  """A quantizer config over every class, kind, sign, grid and granularity it supports."""
  bits = draw(BITS)
  weight_gran = draw(st.sampled_from(WEIGHT_GRANS))
  act_gran = draw(st.sampled_from([PER_TENSOR, PER_CHANNEL]))
  signed = draw(st.sampled_from([True, False, None]))
  options = [
      _fits(
          Uniform,
          bits,
          signed=bool(signed),
          symmetric=draw(st.booleans()),
          granularity=weight_gran,
          calibration=draw(st.sampled_from(["absmax", "minmax", "percentile"])),
          dynamic=draw(st.booleans()),
          ema_decay=draw(st.sampled_from([None, 0.9])),
      ),
      _fits(DoReFa, bits, granularity=weight_gran),
      _fits(DoReFa, bits, kind="activation"),
      _fits(PACT, bits, alpha_init=draw(st.floats(0.25, 10.0))),
      _fits(LSQ, bits, signed=signed, granularity=weight_gran),
      _fits(LSQPlus, bits, signed=signed, granularity=weight_gran),
      _fits(SAT, bits, grid=draw(st.sampled_from(SAT_GRIDS)), granularity=weight_gran),
      _fits(SAT, bits, kind="activation"),
      _fits(FixedPoint, 8, signed=signed, kind=draw(st.sampled_from(["weight", "activation"])),
            granularity=act_gran),
  ]
  return draw(st.sampled_from([q for q in options if q is not None]))


inputs = st.sampled_from(SHAPES).flatmap(
    lambda shape: hnp.arrays(
        np.float32,
        shape,
        elements=st.floats(-100.0, 100.0, width=32, allow_subnormal=False),
    )
)


def _run(q, x):
  """``(fake, export)`` of ``x``, calibrating static statistics on ``x`` itself."""
  x = jnp.asarray(x)
  params, stats = q.init(x)
  stats = q.update(x, params, stats)
  return np.asarray(q.fake(x, params, stats)), q.export(x, params, stats)


def _by_scale_group(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """``values`` as (K, N) split into the blocks that share one scale: ``(G, K/G, N)``."""
  mat = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(-1, 1)
  g = scale.shape[0]
  return mat.reshape(g, mat.shape[0] // g, mat.shape[1])


@settings(max_examples=50, deadline=None)
@given(q=quantizer(), x=inputs)
def test_values_lie_on_the_grid_and_export_equals_fake(q, x):
  y, qa = _run(q, x)
  assert y.shape == x.shape and np.isfinite(y).all()
  scale, zero = np.asarray(qa.scale), qa.zero_point
  zero = np.zeros_like(scale) if zero is None else np.asarray(zero)
  blocks = _by_scale_group(y, scale)
  # On the grid: (y / scale + zero) is an integer code in the code range of the QArray.
  u, z = blocks / scale[:, None, :], zero[:, None, :]
  r = u + z
  # float32 rounding of a code near 2^16: a few ulps of the terms added.
  assert (np.abs(r - np.round(r)) <= 1e-3 + 1e-6 * (np.abs(u) + np.abs(z))).all()
  lo, hi = code_range(qa.bits, qa.signed)
  assert (np.round(r) >= lo).all() and (np.round(r) <= hi).all()
  # At most 2^b levels per scale (block of rows x one column, or whole columns, or all).
  cols = scale.shape[1] == 1
  for gi in range(blocks.shape[0]):
    for ci in [None] if cols else range(blocks.shape[2]):
      block = blocks[gi] if ci is None else blocks[gi, :, ci]
      assert len(np.unique(block)) <= 2**q.bits
  # Export writes the same numbers.
  np.testing.assert_allclose(qa.dequantize(), y, rtol=1e-6, atol=1e-6 * float(np.abs(y).max()))


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 8),
    x=hnp.arrays(np.float32, (3, 4, 5), elements=st.floats(-10.0, 10.0, width=32)),
)
def test_per_token_rows_have_their_own_grid(bits, x):
  y = np.asarray(Uniform(bits=bits, granularity=PER_TOKEN).fake(jnp.asarray(x), {}, {}))
  absmax = np.abs(x).max(-1, keepdims=True)
  scale = np.maximum(absmax / (2 ** (bits - 1) - 1), 1e-12)
  r = y / scale
  np.testing.assert_allclose(r, np.round(r), atol=1e-3)
  assert (np.abs(np.round(r)) <= 2 ** (bits - 1) - 1).all()
  big = absmax / (2 ** (bits - 1) - 1) > 1e-12  # rows above the smallest scale keep their max
  np.testing.assert_allclose(np.abs(y).max(-1, keepdims=True)[big], absmax[big], rtol=1e-5)
