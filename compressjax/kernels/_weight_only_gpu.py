"""Weight-only matmul kernel for GPUs (Triton), also run in interpret mode by the CPU tests.

Grid ``(M blocks, N blocks, K splits)``; each program loops over its share of the packed rows
``P`` of the weight. One step loads ``block_k`` packed rows once and, for each of the
``per = 8 // bits`` planes, shifts/masks out the codes, turns them into floats by bit tricks
(``_codes``) and multiplies them with the matching activation columns ``[j*P + r, ...)`` (the
planar layout of ``QArray``: no gather, every group whole). Group scales and zero points go on the
accumulator at decode shapes (``_group_dot``); per-channel ones once after the loop.

Nothing is padded: ``x``, the packed weight and the scales are read in place through masked
loads, so ragged ``M``, ``N``, ``K`` cost no extra launch. ``split_k`` may be any number: the last
split runs the remaining K blocks (a dynamic trip count); split partial sums are f32 and added by
one XLA fusion that also casts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from compressjax.kernels import _pallas
from compressjax.kernels._group_dot import group_dot, scale_on_acc
from compressjax.qarray import QArray, codes_per_byte

Array = jax.Array


def weight_only_gpu(x: Array, w: QArray, *, group: int | None, config: _pallas.BlockConfig,
                    out_dtype, interpret: bool, platform: str | None) -> Array:
  """``x (M, K) @ dequantize(w)``; operands already checked by ``weight_only_matmul``."""
  (m, k), n = x.shape, w.n
  plane = w.packed.shape[0]
  sub = group or config.block_k  # rows of one dot: a whole group, or a block (per channel)
  bk = _pallas.round_up(config.block_k, sub)
  blocks = _pallas.cdiv(plane, bk)
  splits, steps = _pallas.split_steps(blocks, config.split_k)
  bm, bn = config.block_m, config.block_n
  has_zero = w.zero_point is not None
  kernel = functools.partial(
      _kernel, m=m, n=n, k=k, plane=plane, bits=w.bits, per=codes_per_byte(w.bits),
      offset=2 ** (w.bits - 1) if w.signed else 0, bm=bm, bn=bn, bk=bk, sub=sub, steps=steps,
      blocks=blocks, group=group, has_zero=has_zero, split=splits > 1,
      on_acc=group is None or scale_on_acc(bm, group))
  operands = [x, w.packed, w.scale] + ([w.zero_point] if has_zero else [])
  out_shape = (m, n) if splits == 1 else (splits, m, n)
  grid = (_pallas.cdiv(m, bm), _pallas.cdiv(n, bn), splits)
  y = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(out_shape, out_dtype if splits == 1 else jnp.float32),
      grid=grid,
      interpret=interpret,
      compiler_params=None if interpret else _pallas.compiler_params(len(grid), config, platform),
      name=f"w{w.bits}a{jnp.finfo(x.dtype).bits}_matmul",
  )(*operands)
  return y if splits == 1 else y.sum(axis=0).astype(out_dtype)


def _kernel(x_ref, w_ref, s_ref, *refs, m, n, k, plane, bits, per, offset, bm, bn, bk, sub, steps,
            blocks, group, has_zero, split, on_acc):
  """One ``(bm, bn)`` output tile over this program's K blocks."""
  z_ref = refs[0] if has_zero else None
  o_ref = refs[-1]
  i, j, s = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  m_ok = i * bm + jnp.arange(bm)[:, None] < m
  n_ok = j * bn + jnp.arange(bn)[None, :] < n
  first = s * steps
  count = jnp.minimum(steps, blocks - first)  # the last split may have fewer blocks

  def param(ref, row):
    """The ``(1, bn)`` (or ``(1, 1)``) row of a scale/zero array; 0 past its rows."""
    rows, cols = ref.shape
    if rows == 1:
      row = 0
    if cols == 1:
      return ref[pl.ds(row, 1), pl.ds(0, 1)]
    ok = n_ok & (row < rows)
    return plgpu.load(ref.at[pl.ds(row, 1), pl.ds(j * bn, bn)], mask=ok, other=0.0)

  def step(t, carry):
    acc, xsum = carry
    for g in range(bk // sub):
      r0 = pl.multiple_of((first + t) * bk + g * sub, sub)
      w_ok = (r0 + jnp.arange(sub)[:, None] < plane) & n_ok
      stored = plgpu.load(w_ref.at[pl.ds(r0, sub), pl.ds(j * bn, bn)], mask=w_ok, other=0)
      stored = stored.astype(jnp.int32)
      for p in range(per):
        u = (stored >> (p * bits)) & (2**bits - 1) if per > 1 else stored
        c0 = p * plane + r0  # first logical K row of this plane's slice
        cols = c0 + jnp.arange(sub)[None, :]
        x_ok = m_ok & (cols < min(k, (p + 1) * plane))
        xt = plgpu.load(x_ref.at[pl.ds(i * bm, bm), pl.ds(c0, sub)], mask=x_ok, other=0.0)
        if group:
          row = c0 // group
          zero = param(z_ref, row) if has_zero else None
          acc += group_dot(xt, u, bits=bits, offset=offset, scale=param(s_ref, row), zero=zero,
                           on_acc=on_acc)
        else:
          acc += group_dot(xt, u, bits=bits, offset=offset, scale=None, zero=None, on_acc=True)
          if has_zero:
            xsum += jnp.sum(xt.astype(jnp.float32), axis=1, keepdims=True)
    return acc, xsum

  init = (jnp.zeros((bm, bn), jnp.float32), jnp.zeros((bm, 1), jnp.float32))
  acc, xsum = lax.fori_loop(0, count, step, init)
  if not group:  # per channel: (acc - rowsum(x) * zero) * scale, once
    if has_zero:
      acc -= xsum * param(z_ref, 0)
    acc *= param(s_ref, 0)
  rows, cols = pl.ds(i * bm, bm), pl.ds(j * bn, bn)
  out = o_ref.at[s, rows, cols] if split else o_ref.at[rows, cols]
  plgpu.store(out, acc.astype(o_ref.dtype), mask=m_ok & n_ok)
