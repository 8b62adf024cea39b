"""Weight-only low-bit matmul (W8A16, W4A16, W2A16, ...): ``x @ dequantize(w)``, dequant fused.

The weight stays packed in HBM; each program loads ``block_k`` packed rows, unpacks the
``per = 8 // bits`` planes with shifts and masks, applies ``(code - zero) * scale`` and multiplies
by the matching activation tile, accumulating in f32.

Layout. ``QArray`` packs planarly: packed row ``p`` holds logical rows ``p, P + p, 2P + p, ...``
(``P = K_pad / per``). A K-block of packed rows ``[r, r + block_k)`` therefore maps to ``per``
contiguous activation column ranges ``[j*P + r, j*P + r + block_k)``, each lying in whole groups:
no interleaving shuffle, no gather. The wrapper pads every plane of ``x`` (and of the group scales)
from ``P`` to ``P'`` rows, a multiple of ``split_k * block_k``, so all loads are full tiles.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from compressjax.kernels import _pallas
from compressjax.qarray import QArray, codes_per_byte

Array = jax.Array

_WHERE = "weight_only_matmul"


def weight_only_reference(x: Array, w: QArray, *, out_dtype=None) -> Array:
  """Defines the kernel's meaning: ``x @ w.dequantize()`` in f32 (highest precision)."""
  check_operands(x, w, "weight_only_reference")
  wd = w.dequantize(jnp.float32).reshape(w.k, w.n)
  y = jnp.dot(x.astype(jnp.float32), wd, precision=lax.Precision.HIGHEST)
  return y.astype(out_dtype or x.dtype)


def supports(w: QArray) -> bool:
  """Whether the kernel handles this weight: codes stored in bytes (bits <= 8)."""
  return isinstance(w, QArray) and w.packed.dtype == jnp.uint8


def weight_only_matmul(
    x: Array,
    w: QArray,
    *,
    config: _pallas.BlockConfig | None = None,
    out_dtype=None,
    interpret: bool = False,
    platform: str | None = None,
) -> Array:
  """Pallas ``x (M, K) @ dequantize(w) (K, N)``; ``x`` float32/bfloat16/float16.

  The dequantized tile is cast to ``x.dtype`` before the dot (as the XLA fallback does), the
  accumulation is f32, and the result is cast to ``out_dtype`` (default ``x.dtype``).
  ``config`` sets the tiles (see ``BlockConfig``); ``interpret`` runs the kernel in Pallas
  interpret mode on any platform; ``platform`` ("gpu" / "tpu") lowers for another platform than
  ``jax.default_backend()``, e.g. ahead-of-time from a CPU host.
  """
  check_operands(x, w, _WHERE)
  if not supports(w):
    raise ValueError(
        f"{_WHERE}: w has bits={w.bits} stored as {w.packed.dtype}; the kernel reads byte "
        "storage only (bits <= 8); use the XLA fallback"
    )
  config = config or _pallas.BlockConfig()
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  m, n = x.shape[0], w.n
  per, bits = codes_per_byte(w.bits), w.bits
  group = effective_group(w)
  rows = w.k // group if group else 1
  plane = w.packed.shape[0]  # P: packed rows = rows of one plane
  bk = _pallas.round_up(config.block_k, group) if group else config.block_k
  splits, steps = _pallas.split_steps(_pallas.cdiv(plane, bk), config.split_k)
  plane_pad = splits * steps * bk  # P'
  bm, bn = config.block_m, config.block_n
  m_pad, n_pad = _pallas.round_up(m, bm), _pallas.round_up(n, bn)

  xp = _pallas.pad_to(x, (m_pad, plane * per)).reshape(m_pad, per, plane)
  xp = _pallas.pad_to(xp, (m_pad, per, plane_pad)).reshape(m_pad, per * plane_pad)
  packed = _pallas.pad_to(w.packed, (plane_pad, n_pad))
  offset = 2 ** (bits - 1) if w.signed else 0
  layout = functools.partial(
      _plane_rows, rows=rows, n=n, per=per, plane=plane, plane_pad=plane_pad, group=group,
      n_pad=n_pad)
  scale = layout(w.scale)
  operands = [xp, packed, scale]
  if w.zero_point is not None:  # the storage offset is folded into the zero point
    operands.append(layout(w.zero_point + offset))
  scale_rows = scale.shape[0]
  in_specs = [
      pl.BlockSpec((bm, per * plane_pad), lambda i, j, s: (i, 0)),
      pl.BlockSpec((plane_pad, bn), lambda i, j, s: (0, j)),
  ] + [pl.BlockSpec((scale_rows, bn), lambda i, j, s: (0, j))] * (len(operands) - 2)
  if splits == 1:
    out_shape = jax.ShapeDtypeStruct((m_pad, n_pad), out_dtype)
    out_spec = pl.BlockSpec((bm, bn), lambda i, j, s: (i, j))
  else:
    out_shape = jax.ShapeDtypeStruct((splits, m_pad, n_pad), jnp.float32)
    out_spec = pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j))
  kernel = functools.partial(
      _kernel, bits=bits, per=per, offset=offset, bk=bk, steps=steps, plane_pad=plane_pad,
      group=group, has_zero=w.zero_point is not None,
  )
  grid = (m_pad // bm, n_pad // bn, splits)
  y = pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_spec,
      interpret=interpret,
      compiler_params=None if interpret else _pallas.compiler_params(len(grid), config, platform),
      name=f"w{bits}a{jnp.finfo(x.dtype).bits}_matmul",
  )(*operands)
  if splits > 1:
    y = y.sum(axis=0)
  return y[:m, :n].astype(out_dtype)


def _kernel(x_ref, w_ref, s_ref, *refs, bits, per, offset, bk, steps, plane_pad, group, has_zero):
  """One ``(block_m, block_n)`` output tile, looping over this program's K range."""
  z_ref = refs[0] if has_zero else None
  o_ref = refs[-1]
  bm, bn = o_ref.shape[-2:]
  first_step = pl.program_id(2) * steps
  block_rows = bk // group if group else 1  # scale rows covering one plane's block

  def load_rows(ref, row):
    if not group:  # per channel: one (1, block_n) row for the whole K
      return ref[...]
    return _expand_rows(ref[pl.ds(row, block_rows), :], bk)

  def step(t, acc):
    row0 = pl.multiple_of((first_step + t) * bk, bk)
    stored = w_ref[pl.ds(row0, bk), :].astype(jnp.int32)
    for j in range(per):
      codes = ((stored >> (j * bits)) & (2**bits - 1)) if per > 1 else stored
      col0 = pl.multiple_of(j * plane_pad + row0, bk)
      g0 = lax.div(col0, jnp.int32(group)) if group else 0  # both >= 0: no floor fix-up
      zero = load_rows(z_ref, g0) if has_zero else offset
      w_tile = (codes.astype(jnp.float32) - zero) * load_rows(s_ref, g0)
      x_tile = x_ref[:, pl.ds(col0, bk)]
      acc += jnp.dot(x_tile, w_tile.astype(x_tile.dtype), preferred_element_type=jnp.float32)
    return acc

  acc = lax.fori_loop(0, steps, step, jnp.zeros((bm, bn), jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _expand_rows(rows: Array, bk: int) -> Array:
  """Repeats each of the ``r`` group rows ``bk // r`` times: ``(r, n) -> (bk, n)``."""
  r, n = rows.shape
  if r == 1:
    return rows  # broadcasts against the (bk, n) tile
  return jnp.broadcast_to(rows[:, None, :], (r, bk // r, n)).reshape(bk, n)


def _plane_rows(a: Array, *, rows: int, n: int, per: int, plane: int, plane_pad: int,
                group: int | None, n_pad: int) -> Array:
  """Scales/zeros -> ``(per * P' / group, N_pad)`` (or ``(1, N_pad)``), padded plane by plane."""
  a = jnp.broadcast_to(a.astype(jnp.float32), (rows, n))
  if group:
    a = _pallas.pad_to(a, (per * plane // group, n)).reshape(per, plane // group, n)
    a = _pallas.pad_to(a, (per, plane_pad // group, n)).reshape(per * plane_pad // group, n)
  return _pallas.pad_to(a, (a.shape[0], n_pad))


def effective_group(w: QArray) -> int | None:
  """Rows of K sharing a scale/zero row in the kernel; None when one row covers all of K."""
  zero_rows = 1 if w.zero_point is None else w.zero_point.shape[0]
  return w.group_size if max(w.scale.shape[0], zero_rows) > 1 else None


def check_operands(x: Array, w: QArray, where: str) -> None:
  """Raises TypeError/ValueError naming the bad argument (shared with the XLA fallback)."""
  if not isinstance(w, QArray):
    raise TypeError(f"{where}: w must be a QArray, got {type(w).__name__}")
  _pallas.check_float(x, "x", where)
  _pallas.check_rank(x, 2, "x", where)
  _pallas.check_k(x.shape[1], w.k, w.shape, where)
  group = w.group_size
  if group is not None and (group <= 0 or w.k % group):
    raise ValueError(f"{where}: w.group_size={group} must be a positive divisor of K={w.k}")
  allowed = {(1, 1), (1, w.n)} | ({(w.k // group, w.n)} if group else set())
  for name in ("scale", "zero_point"):
    value = getattr(w, name)
    if value is not None and tuple(value.shape) not in allowed:
      raise ValueError(
          f"{where}: w.{name} has shape {tuple(value.shape)}; allowed for K={w.k}, N={w.n}, "
          f"group_size={group}: {sorted(allowed)}"
      )
