"""QArray: the one integer format that export writes, orbax saves and kernels read.

A weight of any rank is viewed as a matrix ``(K, N)``: ``N`` is the last axis (output features or
channels) and ``K`` the product of the others (the contraction). Scales and zero points are
per tensor ``(1, 1)``, per channel ``(1, N)`` or per group of ``group_size`` consecutive rows of
``K``: ``(K // group_size, N)``. ``dequantize`` computes ``(code - zero_point) * scale``.

Packing layout ("planar"): codes are stored as unsigned bytes, ``bits`` in {1, 2, 4} put
``per = 8 // bits`` codes in one ``uint8``. ``K`` is zero-padded to ``K_pad``, a multiple of
``per * (group_size or 1)``, and split into ``per`` contiguous planes of ``P = K_pad // per``
rows; plane ``j`` (rows ``j*P .. (j+1)*P``) sits at bit offset ``j * bits`` of ``packed[:P]``.
A kernel reading packed rows ``[p, p + b)`` thus gets ``per`` contiguous row ranges of the
logical matrix, each group-aligned, and needs no interleaving shuffle. Signed codes are
stored with an offset of ``2**(bits-1)``. Other bit-widths (3, 5..8) store one code per
``uint8``; 9..16 one per ``uint16``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Array = jax.Array

PACKED_BITS = (1, 2, 4)


def _check_bits(bits: int) -> None:
  if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
    raise ValueError(f"QArray bits={bits!r} is not allowed; use an integer in 1..16")


def codes_per_byte(bits: int) -> int:
  """How many codes share one storage element along K (1 when not packed)."""
  return 8 // bits if bits in PACKED_BITS else 1


def storage_dtype(bits: int) -> np.dtype:
  return np.dtype(np.uint16) if bits > 8 else np.dtype(np.uint8)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
  """Smallest and largest integer code for ``bits`` (two's-complement range when signed)."""
  _check_bits(bits)
  if signed:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
  return 0, 2**bits - 1


def padded_rows(k: int, bits: int, group_size: int | None) -> int:
  """``K`` rounded up so that every plane holds whole groups."""
  unit = codes_per_byte(bits) * (group_size or 1)
  return -(-k // unit) * unit


def as_matrix(x: Array) -> Array:
  """The ``(K, N)`` view of a weight: all axes but the last are contracted."""
  if x.ndim == 0:
    return x.reshape(1, 1)
  if x.ndim == 1:
    return x.reshape(-1, 1)
  return x.reshape(-1, x.shape[-1])


def pack(codes: Array, bits: int, signed: bool, group_size: int | None = None) -> Array:
  """Packs integer codes ``(K, N)`` into the planar storage layout (see module docstring)."""
  _check_bits(bits)
  k, n = codes.shape
  u = codes.astype(jnp.int32) + (2 ** (bits - 1) if signed else 0)
  k_pad = padded_rows(k, bits, group_size)
  u = jnp.pad(u, ((0, k_pad - k), (0, 0))).astype(jnp.uint32)
  per = codes_per_byte(bits)
  if per == 1:
    return u.astype(storage_dtype(bits))
  planes = u.reshape(per, k_pad // per, n)
  shifts = (jnp.arange(per, dtype=jnp.uint32) * bits)[:, None, None]
  return jnp.sum(planes << shifts, axis=0).astype(jnp.uint8)


def unpack(packed: Array, bits: int, signed: bool, k: int) -> Array:
  """Inverse of :func:`pack`: int32 codes ``(k, N)``."""
  per = codes_per_byte(bits)
  p = packed.astype(jnp.int32)
  if per > 1:
    shifts = (jnp.arange(per, dtype=jnp.int32) * bits)[:, None, None]
    p = ((p[None] >> shifts) & (2**bits - 1)).reshape(-1, packed.shape[-1])
  p = p[:k]
  return p - (2 ** (bits - 1) if signed else 0)


@struct.dataclass
class QArray:
  """Integer weight with scales: ``dequantize() == (codes - zero_point) * scale``.

  Attributes:
    packed: storage array (see module docstring for the layout).
    scale: float scales, shape ``(K // group_size, N)``, ``(1, N)`` or ``(1, 1)`` (kept as
      given: a per-tensor scale is stored once).
    zero_point: float zero points with the shape of ``scale``, or None (symmetric).
    bits: bit-width of the codes (1..16).
    signed: whether codes are two's-complement signed.
    shape: logical shape of the weight.
    group_size: rows of ``K`` sharing one scale, or None (per channel / per tensor).
  """

  packed: Array
  scale: Array
  zero_point: Array | None = None
  bits: int = struct.field(pytree_node=False, default=8)
  signed: bool = struct.field(pytree_node=False, default=True)
  shape: tuple[int, ...] = struct.field(pytree_node=False, default=())
  group_size: int | None = struct.field(pytree_node=False, default=None)

  @classmethod
  def from_codes(
      cls,
      codes: Array,
      scale: Array,
      zero_point: Array | None = None,
      *,
      bits: int,
      signed: bool,
      group_size: int | None = None,
  ) -> QArray:
    """Builds a QArray from integer codes of the weight's logical shape.

    ``scale`` and ``zero_point`` may have any shape that broadcasts against the grouped
    matrix view; they are stored in the canonical ``(groups, N)`` form.
    """
    _check_bits(bits)
    shape = tuple(codes.shape)
    mat = as_matrix(codes)
    k, n = mat.shape
    if group_size is not None and (group_size <= 0 or k % group_size):
      raise ValueError(
          f"group_size={group_size} must be a positive divisor of the contraction size K={k} "
          f"(weight shape {shape})"
      )
    lo, hi = code_range(bits, signed)
    groups = k // group_size if group_size else 1
    scale = _canonical(scale, groups, n, "scale")
    zero_point = None if zero_point is None else _canonical(zero_point, groups, n, "zero_point")
    packed = pack(jnp.clip(mat, lo, hi), bits, signed, group_size)
    return cls(packed, scale, zero_point, bits, signed, shape, group_size)

  @property
  def k(self) -> int:
    return math.prod(self.shape[:-1]) if len(self.shape) > 1 else max(math.prod(self.shape), 1)

  @property
  def n(self) -> int:
    return self.shape[-1] if len(self.shape) > 1 else 1

  def codes(self) -> Array:
    """Unpacked int32 codes, ``(K, N)``."""
    return unpack(self.packed, self.bits, self.signed, self.k)

  def dequantize(self, dtype: Any = jnp.float32) -> Array:
    """The float weight with its logical shape."""
    codes = self.codes().astype(jnp.float32)
    groups = max(self.scale.shape[0], 1 if self.zero_point is None else self.zero_point.shape[0])
    codes = codes.reshape(groups, self.k // groups, self.n)
    if self.zero_point is not None:
      codes = codes - self.zero_point[:, None, :]
    w = codes * self.scale[:, None, :]
    return w.reshape(self.shape).astype(dtype)

  @property
  def nbytes(self) -> int:
    """Bytes of storage: packed codes, scales and zero points."""
    total = self.packed.size * self.packed.dtype.itemsize + self.scale.size * self.scale.dtype.itemsize
    if self.zero_point is not None:
      total += self.zero_point.size * self.zero_point.dtype.itemsize
    return int(total)


def _canonical(x: Array, groups: int, n: int, name: str) -> Array:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim > 2:
    # Per-channel arrays of a conv kernel, e.g. (1, 1, 1, N): keep the last axis.
    if math.prod(x.shape[:-1]) != 1:
      raise ValueError(f"QArray {name} of shape {x.shape} is not per-tensor/channel/group")
    x = x.reshape(1, x.shape[-1])
  x = x.reshape((1,) * (2 - x.ndim) + x.shape)
  if x.shape not in {(1, 1), (1, n), (groups, n)}:
    raise ValueError(
        f"QArray {name} of shape {x.shape} must be (1, 1), (1, N={n}) or (groups={groups}, N={n})"
    )
  return x


def is_qarray(x: Any) -> bool:
  return isinstance(x, QArray)
