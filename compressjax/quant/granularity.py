"""Which elements share one scale: per tensor, per channel, per group of rows, per token.

Weights are seen as the ``(K, N)`` matrix of :mod:`compressjax.qarray` (``N`` = last axis =
output channel, ``K`` = product of the other axes). Quantizers work on :meth:`Granularity.view`
of a tensor, reduce statistics over :meth:`Granularity.reduce` (kept as broadcastable dims) and
map the result back with :meth:`Granularity.unview`:

- ``tensor``: the view is ``x``; statistics are scalars.
- ``channel``: the view is ``x``; statistics have shape ``(1, ..., 1, N)`` (reduced over every
  axis but the last). For weights that is per output channel; for activations per feature.
  A rank-0/1 tensor is one column of the ``(K, N)`` view, so it falls back to per tensor.
- ``group``: the view is ``(K // group_size, group_size, N)``; statistics ``(K // group_size, 1,
  N)``: ``group_size`` consecutive rows of ``K`` share a scale (weights, as in W4A16 kernels).
- ``token``: activations only, dynamic ranges only; statistics ``x.shape[:-1] + (1,)``: one
  scale per row (token) along the last axis. Not exportable (it depends on the batch).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.qarray import as_matrix
from compressjax.quant._reduce import fused_reduce

Array = jax.Array

KINDS = ("tensor", "channel", "group", "token")
REDUCTIONS = ("absmax", "min", "max", "mean_abs", "std", "percentile")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Granularity:
  """How scales are shared; ``group_size`` is set exactly when ``kind == "group"``."""

  kind: str = "tensor"
  group_size: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Granularity: kind={self.kind!r} is not allowed; use one of {KINDS}")
    if self.kind == "group":
      if not isinstance(self.group_size, int) or self.group_size <= 0:
        raise ValueError(
            f"Granularity: group_size={self.group_size!r} is not allowed; use a positive integer"
        )
    elif self.group_size is not None:
      raise ValueError(
          f"Granularity: group_size={self.group_size!r} is only allowed with kind='group' "
          f"(got kind={self.kind!r})"
      )

  def view(self, x: Array) -> Array:
    """``x`` reshaped so that statistics from :meth:`reduce` broadcast onto it."""
    if self.kind != "group":
      return x
    k, n = as_matrix(x).shape
    if k % self.group_size:
      raise ValueError(
          f"group_size={self.group_size} does not divide K={k} of the tensor of shape "
          f"{tuple(x.shape)} (K = product of all axes but the last)"
      )
    return x.reshape(k // self.group_size, self.group_size, n)

  def unview(self, v: Array, shape: tuple[int, ...]) -> Array:
    """Inverse of :meth:`view`."""
    return v.reshape(shape)

  def axes(self, ndim: int) -> tuple[int, ...]:
    """Axes of the view that one statistic reduces over."""
    if self.kind == "channel" and ndim >= 2:
      return tuple(range(ndim - 1))
    if self.kind == "group":
      return (1,)
    if self.kind == "token":
      if ndim == 0:
        raise ValueError("Granularity 'token' needs a tensor with at least one axis")
      return (ndim - 1,)
    return tuple(range(ndim))

  def reduce(self, v: Array, op: str, *, q: float | None = None) -> Array:
    """Statistic ``op`` of the view ``v`` (see :data:`REDUCTIONS`), broadcastable onto ``v``.

    Only finite elements count (NaN/Inf are skipped), so one bad example never contaminates the
    scale of the others; a statistic with no finite (or no) element is 0. ``percentile`` needs
    ``q`` in [0, 100]. Per-tensor statistics are scalars, so they also fit activations whose
    batch shape changes between calls.
    """
    axes = self.axes(v.ndim)
    keep = self.kind != "tensor"
    if not jnp.issubdtype(v.dtype, jnp.inexact):
      v = v.astype(jnp.float32)
    zero = lambda r: jnp.where(jnp.isfinite(r), r, 0.0)
    if op in ("absmax", "min", "max"):
      hi, lo = _finite_stats(v, axes, keep, "range")
      if op == "absmax":
        return jnp.maximum(jnp.maximum(hi, -lo), 0.0)
      return zero(lo if op == "min" else hi)
    if op == "mean_abs":
      total, count = _finite_stats(v, axes, keep, "sum_count")
      return (total / jnp.maximum(count, 1.0)).astype(v.dtype)
    finite = jnp.isfinite(v)
    if op == "std":
      return zero(jnp.nanstd(jnp.where(finite, v, jnp.nan), axis=axes, keepdims=keep))
    if op == "percentile":
      if q is None:
        raise ValueError("Granularity.reduce: op='percentile' needs q in [0, 100]")
      # q / 100 here, not inside nanpercentile: XLA folds that division differently under jit.
      return zero(jnp.nanquantile(jnp.where(finite, v, jnp.nan), q / 100.0, axis=axes,
                                  keepdims=keep))
    raise ValueError(f"Granularity.reduce: op={op!r} is not allowed; use one of {REDUCTIONS}")

  def per_stat(self, shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of ``shape`` that share one statistic."""
    size = math.prod(shape)
    if self.kind == "group":
      return self.group_size
    if self.kind == "tensor" or (self.kind == "channel" and len(shape) < 2):
      return size
    return size // shape[-1] if self.kind == "channel" else shape[-1]

  def to_qarray(self, stat: Array, shape: tuple[int, ...]) -> Array:
    """A statistic (scale, zero point) in QArray's canonical ``(1, 1)``/``(1, N)``/``(G, N)``.

    A scalar is shared by the whole tensor whatever the granularity, so it becomes ``(1, 1)``.
    """
    if self.kind == "token":
      raise ValueError(
          "Granularity 'token' has batch-dependent scales and no QArray form; export weights "
          "per tensor, channel or group"
      )
    stat = jnp.asarray(stat, jnp.float32)
    if stat.ndim == 0 or self.kind == "tensor" or (self.kind == "channel" and len(shape) < 2):
      return stat.reshape(1, 1)
    return stat.reshape(-1, stat.shape[-1])


PER_TENSOR = Granularity()
PER_CHANNEL = Granularity(kind="channel")
PER_TOKEN = Granularity(kind="token")


def per_group(group_size: int) -> Granularity:
  """``group_size`` consecutive rows of the ``(K, N)`` weight view share a scale."""
  return Granularity(kind="group", group_size=group_size)


# Per statistic kind: the (identity, combine) of each of its two reductions.
_REDUCERS = {"range": ((-jnp.inf, lax.max), (jnp.inf, lax.min)),
             "sum_count": ((0.0, lax.add), (0.0, lax.add))}


def _reduce_stats(v: Array, axes: tuple[int, ...], keep: bool, kind: str, fused: bool):
  """Over the finite elements of ``v`` along ``axes``: (max, min) for ``kind="range"`` (-inf,
  inf when there is none), (sum of |v|, count) in at least f32 for ``kind="sum_count"``. Fused:
  one variadic ``lax.reduce``, into which XLA fuses the masking (two single reductions each
  materialize their masked input: XLA:CPU splits a long reduction into a tree over it, 32 MB
  for a 2048 x 2048 kernel); else two plain, differentiable reductions."""
  finite = jnp.isfinite(v)
  if kind == "range":
    operands = (jnp.where(finite, v, -jnp.inf), jnp.where(finite, v, jnp.inf))
  else:
    acc = jnp.promote_types(v.dtype, jnp.float32)
    operands = (jnp.where(finite, jnp.abs(v), 0.0).astype(acc), finite.astype(acc))
  inits = tuple(jnp.array(i, o.dtype) for (i, _), o in zip(_REDUCERS[kind], operands))
  combines = tuple(c for _, c in _REDUCERS[kind])
  if fused:
    out = fused_reduce(operands, inits, combines, axes)
  else:
    out = tuple(lax.reduce(o, i, c, axes) for o, i, c in zip(operands, inits, combines))
  return tuple(jnp.expand_dims(o, axes) if keep else o for o in out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _finite_stats(v: Array, axes: tuple[int, ...], keep: bool, kind: str):
  """:func:`_reduce_stats` fused, differentiated through its plain form."""
  return _reduce_stats(v, axes, keep, kind, fused=True)


@_finite_stats.defjvp
def _finite_stats_jvp(axes, keep, kind, primals, tangents):
  return jax.jvp(lambda v: _reduce_stats(v, axes, keep, kind, fused=False), primals, tangents)
