"""Keep exact zeros through a quantizer, so pruned weights stay pruned after QAT and export.

Pruners (:mod:`compressjax.prune`) keep masked weights at exactly 0. A symmetric quantizer maps
0 to 0 anyway, but others do not (DoReFa's grid has no zero; asymmetric ranges round it). A
site rule ``weight=keep_zeros(quantizer)`` forces those positions to 0 in the fake-quant
forward pass and writes the zero code there on export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compressjax.qarray import QArray, as_matrix

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class KeepZeros:
  """Wraps a quantizer (or any transform); positions where the input is 0 stay exactly 0."""

  inner: Any

  def init(self, x: Array):
    return self.inner.init(x)

  def update(self, x: Array, params, stats):
    return self.inner.update(x, params, stats)

  def fake(self, x: Array, params, stats) -> Array:
    return jnp.where(x == 0, jnp.zeros_like(x), self.inner.fake(x, params, stats))

  def export(self, x: Array, params, stats) -> QArray:
    q = self.inner.export(x, params, stats)
    codes = q.codes()
    zero_code = jnp.zeros_like(codes) if q.zero_point is None else _rows(q.zero_point, q.k)
    if q.zero_point is not None and not np.allclose(np.round(zero_code), zero_code):
      raise ValueError(
          f"keep_zeros({type(self.inner).__name__}): its grid has no exact zero (zero point "
          f"{np.asarray(q.zero_point).ravel()[:3]}...); use a symmetric quantizer such as LSQ or "
          "Uniform for pruned weights"
      )
    codes = jnp.where(as_matrix(x) == 0, jnp.round(zero_code).astype(codes.dtype), codes)
    return QArray.from_codes(codes.reshape(q.shape), q.scale, q.zero_point, bits=q.bits,
                             signed=q.signed, group_size=q.group_size)


def _rows(per_group: Array, k: int) -> Array:
  """Expands a (groups, N) or (1, N) array to (K, N) rows."""
  return jnp.repeat(per_group, k // per_group.shape[0], axis=0)


def keep_zeros(transform: Any) -> KeepZeros:
  """``transform`` that leaves exact zeros (pruned weights) at zero, in training and export."""
  return KeepZeros(transform)
