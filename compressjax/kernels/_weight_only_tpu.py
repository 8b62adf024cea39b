"""Weight-only matmul kernel for TPUs (Mosaic), also run in interpret mode by the CPU tests.

Grid ``(M blocks, N blocks, K blocks)`` with K "arbitrary" (sequential): Mosaic double-buffers
one ``(block_k, block_n)`` tile of packed rows per step while the previous one is computed, and
an f32 VMEM scratch accumulates; the output tile is written on the last K step. ``x`` is viewed
as ``(M, per, P)`` (the planes of ``QArray``'s planar layout) and grouped scales as
``(per, P / group, N)``, so one block index selects the matching activation columns and scale rows
of every plane. Codes become floats through 32-bit magic numbers (``_codes``, ``wide``); group
scales multiply the tile (one MXU dot per plane), per-channel ones the accumulator at the end.

Block shapes follow Mosaic's rule (last two dims multiples of (8, 128) or whole): ``block_k`` is
a multiple of 128 and of ``8 * group`` unless one block covers the plane. A ragged last K block
is masked in the kernel; ``x`` is padded only when ``K`` is not already a whole number of planes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from compressjax.kernels import _pallas
from compressjax.kernels._group_dot import group_dot
from compressjax.qarray import QArray, codes_per_byte

Array = jax.Array

SEMANTICS = ("parallel", "parallel", "arbitrary")


def weight_only_tpu(x: Array, w: QArray, *, group: int | None, config: _pallas.BlockConfig,
                    out_dtype, interpret: bool, platform: str | None) -> Array:
  """``x (M, K) @ dequantize(w)``; operands already checked by ``weight_only_matmul``."""
  (m, k), n = x.shape, w.n
  per, plane = codes_per_byte(w.bits), w.packed.shape[0]
  unit = math.lcm(128, 8 * group) if group else 128
  bk = _pallas.round_up(config.block_k, unit)
  bk = plane if bk >= plane else bk
  bm = m if m <= config.block_m else config.block_m
  bn = n if n <= config.block_n else config.block_n
  grid = (_pallas.cdiv(m, bm), _pallas.cdiv(n, bn), _pallas.cdiv(plane, bk))
  x3 = _pallas.pad_to(x, (m, per * plane)).reshape(m, per, plane)
  operands = [x3, w.packed]
  in_specs = [pl.BlockSpec((bm, per, bk), lambda i, j, kk: (i, 0, kk)),
              pl.BlockSpec((bk, bn), lambda i, j, kk: (kk, j))]
  params = [w.scale] + ([] if w.zero_point is None else [w.zero_point])
  for a in params:
    array, spec = _param_operand(a, group=group, per=per, plane=plane, bk=bk, bn=bn)
    operands.append(array)
    in_specs.append(spec)
  has_zero = w.zero_point is not None
  scratch = [pltpu.VMEM((bm, bn), jnp.float32)]
  if has_zero and not group:
    scratch.append(pltpu.VMEM((bm, 1), jnp.float32))
  kernel = functools.partial(
      _kernel, k=k, plane=plane, bits=w.bits, per=per,
      offset=2 ** (w.bits - 1) if w.signed else 0, bk=bk, k_blocks=grid[2], group=group,
      has_zero=has_zero)
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
      grid_spec=pl.GridSpec(grid=grid, in_specs=in_specs,
                            out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
                            scratch_shapes=scratch),
      interpret=interpret,
      compiler_params=None if interpret else _pallas.compiler_params(
          len(grid), config, platform, semantics=SEMANTICS),
      name=f"w{w.bits}a{jnp.finfo(x.dtype).bits}_matmul_tpu",
  )(*operands)


def _param_operand(a: Array, *, group, per, plane, bk, bn):
  """A scale/zero array and its BlockSpec: grouped rows as ``(per, P / group, N)``."""
  rows, cols = a.shape
  bc = 1 if cols == 1 else bn
  if group and rows > 1:
    a = _pallas.pad_to(a, (per * plane // group, cols)).reshape(per, plane // group, cols)
    col = (lambda j: 0) if cols == 1 else (lambda j: j)
    return a, pl.BlockSpec((per, bk // group, bc), lambda i, j, kk: (0, kk, col(j)))
  col = (lambda j: 0) if cols == 1 else (lambda j: j)
  return a, pl.BlockSpec((1, bc), lambda i, j, kk: (0, col(j)))


def _kernel(x_ref, w_ref, s_ref, *refs, k, plane, bits, per, offset, bk, k_blocks, group,
            has_zero):
  z_ref = refs[0] if has_zero else None
  o_ref, acc_ref, *xsum_ref = refs[1:] if has_zero else refs
  kk = pl.program_id(2)

  @pl.when(kk == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)
    for r in xsum_ref:
      r[...] = jnp.zeros_like(r)

  stored = w_ref[...].astype(jnp.int32)
  local = kk * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)  # row within the plane
  ragged = plane % bk != 0 or k < per * plane
  acc = jnp.zeros(acc_ref.shape, jnp.float32)
  for p in range(per):
    u = (stored >> (p * bits)) & (2**bits - 1) if per > 1 else stored
    xt = x_ref[:, p, :]
    valid = (local < plane) & (p * plane + local < k)
    if ragged:
      xt = jnp.where(valid, xt, 0)
    if group:
      scale = _tile(s_ref, p, group, valid if ragged else None)
      zero = _tile(z_ref, p, group, valid if ragged else None) if has_zero else None
      acc += group_dot(xt, u, bits=bits, offset=offset, scale=scale, zero=zero, on_acc=False,
                       wide=True)
    else:
      acc += group_dot(xt, u, bits=bits, offset=offset, scale=None, zero=None, on_acc=True,
                       wide=True)
      for r in xsum_ref:
        r[...] += jnp.sum(xt.astype(jnp.float32), axis=1, keepdims=True)
  acc_ref[...] += acc

  @pl.when(kk == k_blocks - 1)
  def _finish():
    out = acc_ref[...]
    if not group:
      if has_zero:
        out -= xsum_ref[0][...] * z_ref[...]
      out *= s_ref[...]
    o_ref[...] = out.astype(o_ref.dtype)


def _tile(ref, p: int, group: int, valid: Array | None) -> Array:
  """Plane ``p``'s grouped rows expanded to ``(bk, bn)`` (a single row stays ``(1, bn)``)."""
  if ref.ndim == 2:
    return ref[...]
  rows = ref[p]
  r, c = rows.shape
  tile = jnp.broadcast_to(rows[:, None, :], (r, group, c)).reshape(r * group, c)
  return tile if valid is None else jnp.where(valid.reshape(-1, 1), tile, 0.0)
