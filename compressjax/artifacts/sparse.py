"""Sparse storage of pruned weights: a bitmap plus the nonzero codes, or N:M compressed.

A weight is viewed as the ``(K, N)`` matrix of :mod:`compressjax.qarray` (K: the contraction).
:func:`pack` stores a QArray (or a float array) as a :class:`SparseWeight`:

* ``"bitmap"``: one bit per weight (is it nonzero?) plus the nonzero codes in row-major order,
  each ``bits`` wide in one bitstream (a float array keeps its nonzero values in its dtype).
* ``"nm"``: in every group of ``m`` consecutive rows of a column at most ``n`` weights are
  nonzero; stored are ``n`` codes per group and their in-group positions, ``ceil(log2 m)`` bits
  each (a group with fewer than ``n`` nonzeros stores zero codes in the free slots).

"Zero" is the code that dequantizes to 0: code 0, or the zero point (which must then be an
integer). Scales and zero points are stored as they are. :func:`unpack` is exact (the same
QArray, bit for bit) and jittable, so a serving artifact can expand the weights in its own
program; :func:`nbytes` is the storage size by the formulas above.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from compressjax.core.compress import SERVED
from compressjax.core.tree_paths import get_path, set_path
from compressjax.qarray import QArray, as_matrix, code_range

FORMATS = ("bitmap", "nm")


@struct.dataclass
class SparseWeight:
  """A pruned weight in sparse storage (see the module docstring); :func:`unpack` restores it.

  Attributes:
    values: the stored codes, ``bits`` each, as a uint8 bitstream (a float weight: its stored
      values as an array of its dtype).
    index: ``"bitmap"``: the bitmap, one bit per weight of the ``(K, N)`` view, row-major;
      ``"nm"``: the in-group positions, ``index_bits`` each, as a uint8 bitstream.
    scale, zero_point: the QArray's (None for a float weight).
    format: ``"bitmap"`` or ``"nm"``.
    shape: the weight's logical shape.
    stored: how many values are stored (nonzeros, or ``n`` per group).
    bits, signed, group_size: the QArray's (``bits`` None for a float weight).
    n, m: the N:M pattern (None for a bitmap).
  """

  values: jax.Array
  index: jax.Array
  scale: jax.Array | None
  zero_point: jax.Array | None
  format: str = struct.field(pytree_node=False)
  shape: tuple[int, ...] = struct.field(pytree_node=False)
  stored: int = struct.field(pytree_node=False)
  bits: int | None = struct.field(pytree_node=False, default=None)
  signed: bool = struct.field(pytree_node=False, default=True)
  group_size: int | None = struct.field(pytree_node=False, default=None)
  n: int | None = struct.field(pytree_node=False, default=None)
  m: int | None = struct.field(pytree_node=False, default=None)

  @property
  def index_bits(self) -> int:
    return _index_bits(self.m) if self.format == "nm" else 1

  @property
  def nbytes(self) -> int:
    return nbytes(self)


def _byte_size(x: Any) -> int:
  return 0 if x is None else int(np.size(x)) * np.dtype(x.dtype).itemsize


def nbytes(w: SparseWeight) -> int:
  """Storage bytes: ``ceil(stored * bits / 8)`` (or ``stored * itemsize`` for floats), plus
  ``ceil(K * N / 8)`` for a bitmap or ``ceil(stored * ceil(log2 m) / 8)`` for N:M positions,
  plus the scales and zero points."""
  k, n = _kn(w.shape)
  values = (math.ceil(w.stored * w.bits / 8) if w.bits is not None
            else w.stored * np.dtype(w.values.dtype).itemsize)
  index = math.ceil(k * n / 8) if w.format == "bitmap" else math.ceil(
      w.stored * w.index_bits / 8)
  return values + index + _byte_size(w.scale) + _byte_size(w.zero_point)


def pack(weight: QArray | Any, format: str = "bitmap", *,  # pylint: disable=redefined-builtin
         n: int | None = None, m: int | None = None, name: str = "weight") -> SparseWeight:
  """``weight`` (a QArray or a float array) in sparse storage; ``name`` labels errors.

  ``format="nm"`` needs ``1 <= n <= m``, ``m`` dividing K, and at most ``n`` nonzeros in every
  group of ``m`` rows of the ``(K, N)`` view.
  """
  if format not in FORMATS:
    raise ValueError(f"sparse storage of {name}: unknown format {format!r}; allowed: "
                     f"{', '.join(FORMATS)}")
  if isinstance(weight, QArray):
    mat = np.asarray(weight.codes())
    zero = _zero_codes(weight, name)
    meta = dict(scale=weight.scale, zero_point=weight.zero_point, bits=weight.bits,
                signed=weight.signed, group_size=weight.group_size)
  else:
    mat = np.asarray(as_matrix(jnp.asarray(weight)))
    zero = np.zeros_like(mat)
    meta = dict(scale=None, zero_point=None, bits=None)
  shape = tuple(weight.shape)
  if format == "bitmap":
    keep = mat != zero
    values = mat[keep]
    index = np.packbits(keep.ravel(), bitorder="little")
    extra = {}
  else:
    _check_nm(n, m, mat, zero, name)
    k, cols = mat.shape
    groups = (mat != zero).T.reshape(cols, k // m, m)
    slots = np.argsort(~groups, axis=-1, kind="stable")[..., :n]  # nonzeros first, in order
    values = np.take_along_axis(mat.T.reshape(cols, k // m, m), slots, axis=-1).ravel()
    index = _bitstream(slots.ravel(), _index_bits(m))
    extra = dict(n=n, m=m)
  stored = int(values.size)
  if meta["bits"] is not None:
    lo, _ = code_range(meta["bits"], meta["signed"])
    values = _bitstream(values - lo, meta["bits"])
  return SparseWeight(values=jnp.asarray(values), index=jnp.asarray(index), format=format,
                      shape=shape, stored=stored, **meta, **extra)


def unpack(w: SparseWeight) -> QArray | jax.Array:
  """The dense weight (the QArray, or the float array) of ``w``; exact and jittable."""
  k, cols = _kn(w.shape)
  if w.bits is None:
    values, zero = w.values, jnp.zeros((k, cols), w.values.dtype)
  else:
    lo, _ = code_range(w.bits, w.signed)
    values = _from_bitstream(w.values, w.bits, w.stored) + lo
    zero = _zero_rows(w.zero_point, k, cols)
  if w.format == "bitmap":
    keep = jnp.unpackbits(w.index, count=k * cols, bitorder="little").astype(bool)
    where = jnp.clip(jnp.cumsum(keep) - 1, 0, max(w.stored - 1, 0))
    picked = values[where] if w.stored else jnp.zeros_like(keep, values.dtype)
    mat = jnp.where(keep.reshape(k, cols), picked.reshape(k, cols), zero)
  else:
    slots = _from_bitstream(w.index, w.index_bits, w.stored).reshape(cols, k // w.m, w.n)
    rows = slots + jnp.arange(0, k, w.m)[None, :, None]  # (cols, groups, n): the row in K
    column = jnp.arange(cols)[:, None, None]
    mat = zero.T.at[column, rows].set(values.reshape(rows.shape).astype(zero.dtype)).T
  if w.bits is None:
    return mat.reshape(w.shape)
  return QArray.from_codes(mat.reshape(w.shape), w.scale, w.zero_point, bits=w.bits,
                           signed=w.signed, group_size=w.group_size)


def _index_bits(m: int) -> int:
  """Bits of one in-group position of an N:M group of ``m``."""
  return max(1, math.ceil(math.log2(m)))


def _kn(shape: tuple[int, ...]) -> tuple[int, int]:
  if len(shape) > 1:
    return math.prod(shape[:-1]), shape[-1]
  return max(math.prod(shape), 1), 1


def _zero_rows(zero_point, k: int, cols: int):
  """The ``(K, N)`` codes of 0: 0, or the zero point of each row's group."""
  if zero_point is None:
    return jnp.zeros((k, cols), jnp.int32)
  zp = jnp.round(jnp.broadcast_to(zero_point, (zero_point.shape[0], cols))).astype(jnp.int32)
  return jnp.repeat(zp, k // zp.shape[0], axis=0)


def _zero_codes(q: QArray, name: str) -> np.ndarray:
  if q.zero_point is not None:
    zp = np.asarray(q.zero_point)
    if not np.array_equal(zp, np.round(zp)):
      raise ValueError(f"sparse storage of {name}: zero point {zp.ravel()[:3]}... is not an "
                       "integer, so no code is exactly 0; store pruned weights with a "
                       "symmetric quantizer (zero_point None) or keep_zeros")
  return np.asarray(_zero_rows(q.zero_point, q.k, q.n))


def _check_nm(n, m, mat: np.ndarray, zero: np.ndarray, name: str) -> None:
  if not (isinstance(n, int) and isinstance(m, int)) or not 1 <= n <= m:
    raise ValueError(f"sparse storage of {name}: N:M needs integers 1 <= n <= m, got n={n!r}, "
                     f"m={m!r}")
  k, cols = mat.shape
  if k % m:
    raise ValueError(f"sparse storage of {name}: m={m} must divide the contraction size K={k}")
  counts = (mat != zero).T.reshape(cols, k // m, m).sum(-1)
  if counts.max(initial=0) > n:
    raise ValueError(f"sparse storage of {name}: not {n}:{m} sparse (a group of {m} rows holds "
                     f"{int(counts.max())} nonzeros; allowed: at most {n})")


def _bitstream(values: np.ndarray, bits: int) -> np.ndarray:
  """Unsigned integers, ``bits`` each, little-endian, in ``ceil(size * bits / 8)`` bytes."""
  v = np.asarray(values, np.uint32).ravel()
  planes = (v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
  return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def _from_bitstream(stream, bits: int, count: int):
  planes = jnp.unpackbits(stream, count=count * bits, bitorder="little").reshape(count, bits)
  return jnp.sum(planes.astype(jnp.int32) << jnp.arange(bits, dtype=jnp.int32), axis=-1)


def parse_format(spec: str, name: str = "weight") -> dict[str, Any]:
  """``"bitmap"`` or ``"N:M"`` (e.g. ``"2:4"``) as :func:`pack`'s keyword arguments."""
  if spec == "bitmap":
    return {"format": "bitmap"}
  parts = spec.split(":")
  if len(parts) == 2 and all(p.isdigit() for p in parts):
    return {"format": "nm", "n": int(parts[0]), "m": int(parts[1])}
  raise ValueError(f"sparse storage of {name}: unknown format {spec!r}; allowed: 'bitmap' or "
                   "'N:M' such as '2:4'")


def pack_sites(serving_vars: dict, formats: dict[str, str]) -> dict:
  """``serving_vars`` with the served weight of each site in ``formats`` (site name -> "bitmap"
  or "N:M", e.g. ``{"conv2/kernel": "bitmap"}``) as a :class:`SparseWeight`."""
  if serving_vars is None:
    raise ValueError("sparse storage needs a Linen serving model and its variables (an NNX "
                     "serving module was given)")
  served = dict(serving_vars.get(SERVED, {}))
  for site, spec in formats.items():
    entry = get_path(served, site)
    weight = None if entry is None else entry.get("weight")
    if not isinstance(weight, QArray):
      raise ValueError(f"sparse storage of site {site!r}: it has no served QArray weight; sites "
                       f"with one: {', '.join(_qarray_sites(served)) or 'none'}")
    set_path(served, site, {**entry, "weight": pack(weight, name=site, **parse_format(spec, site))})
  return {**serving_vars, SERVED: served}


def unpack_tree(tree: Any) -> Any:
  """``tree`` with every :class:`SparseWeight` unpacked (jittable)."""
  return jax.tree_util.tree_map(lambda v: unpack(v) if isinstance(v, SparseWeight) else v, tree,
                                is_leaf=lambda v: isinstance(v, SparseWeight))


def stored_bytes(serving_vars: dict, formats: dict[str, str]) -> int:
  """Storage bytes of ``serving_vars`` (params and served weights, as ``size_report`` counts
  them) with the sites in ``formats`` stored sparse."""
  from compressjax.export import size_report  # pylint: disable=g-import-not-at-top

  total = size_report(serving_vars).total_bytes
  packed = pack_sites(serving_vars, formats)[SERVED]
  for site in formats:
    total += get_path(packed, site)["weight"].nbytes - get_path(
        serving_vars[SERVED], site)["weight"].nbytes
  return total


def _qarray_sites(served: dict, prefix: str = "") -> list[str]:
  if isinstance(served.get("weight"), QArray):
    return [prefix.rstrip("/")]
  return [s for k, v in served.items() if isinstance(v, dict)
          for s in _qarray_sites(v, f"{prefix}{k}/")]


__all__ = ["FORMATS", "SparseWeight", "nbytes", "pack", "pack_sites", "parse_format",
           "stored_bytes", "unpack", "unpack_tree"]
