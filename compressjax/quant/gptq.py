"""GPTQ (Frantar et al. 2023): post-training weight-only quantization with error feedback.

For a weight ``w`` (K, N) applied as ``x @ w`` (K = contraction) and ``H = 2 X^T X`` from
calibration inputs, GPTQ quantizes the K rows one at a time and spreads each row's rounding
error over the rows not yet quantized so that the layer output ``X w`` changes least:

- dead inputs (``H_kk == 0``) get ``H_kk = 1`` and ``w_k = 0``; then ``H += damp *
  mean(diag H) * I``, and ``U`` is the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``);
- row ``k``: ``q_k = Q(w_k)``, ``e = (w_k - q_k) / U_kk``, ``w_j -= e * U_kj`` for ``j > k``;
  inside a block of ``block_size`` rows at once, for later blocks in one matmul per block
  ("lazy batch updates"), which is exact: the same updates, in a different order;
- ``act_order``: rows in order of decreasing ``diag H`` (most activated inputs first, while
  many rows are left to absorb their error); codes are returned in the original row order.

Scales: without groups, one per output column from the whole (dead-zeroed) column. With
``group_size`` g, one per column and group of g consecutive rows, computed when GPTQ reaches
the group, from the current error-updated rows of that group (blocks are rounded to whole
groups so a group's rows are all up to date then). With ``act_order`` and groups the
"static groups" variant is used: group scales come from the (dead-zeroed) weights before any
update, in the original row order, so groups stay contiguous in the original layout.

The grid is ``rtn_quantize``'s, so GPTQ and round-to-nearest are comparable: symmetric
signed codes ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` with ``scale = absmax / (2^(b-1) - 1)`` and no
zero point (as ``Uniform``), or asymmetric unsigned codes ``[0, 2^b - 1]`` with
``scale = (max - min) / (2^b - 1)`` over a range widened to contain 0 and an integer zero point.
Dequantized weights are ``(codes - zero_point) * scale`` per group (the ``QArray`` layout).

Written in jnp with static shapes (a Python loop over blocks, ``lax.fori_loop`` over the rows
of a block), as two jit-compiled stages: the Hessian factorisation, and the row loop with
``bits`` traced, so sweeps over bits and groups reuse compilations. ``gptq_quantize`` itself is
jit-able, and runs on the accelerator next to the model.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

BITS = range(2, 9)
_EPS = 1e-12  # smallest scale: an all-zero column quantizes to code 0, never NaN
_HIGHEST = lax.Precision.HIGHEST


@jax.jit
def hessian_from_inputs(x: Array, hessian: Array | None = None) -> Array:
  """``hessian + 2 X^T X`` in float32, X = ``x`` (..., K) with the leading axes flattened.

  Call it once per calibration batch, passing the running sum (GPTQ is invariant to the
  overall scale of H, so sums and means give the same result).
  """
  x = jnp.asarray(x, jnp.float32).reshape(-1, x.shape[-1])
  h = 2.0 * jnp.matmul(x.T, x, precision=_HIGHEST)
  return h if hessian is None else hessian + h


def rtn_quantize(w: Array, *, bits: int, group_size: int | None = None,
                 symmetric: bool = True) -> tuple[Array, Array, Array | None]:
  """Round-to-nearest on GPTQ's grid: ``(codes int32 (K, N), scale (groups, N), zero_point
  (groups, N) or None)``; one group of all K rows when ``group_size`` is None."""
  _check("rtn_quantize", w, bits, group_size)
  codes, scale, zero = _rtn(jnp.asarray(w, jnp.float32), jnp.float32(bits),
                            group_size=group_size, symmetric=symmetric)
  return codes, scale, zero if not symmetric else None


def gptq_quantize(w: Array, hessian: Array, *, bits: int, group_size: int | None = None,
                  act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                  symmetric: bool = True) -> tuple[Array, Array, Array | None]:
  """GPTQ of ``w`` (K, N) given ``hessian`` (K, K); see the module docstring.

  Args:
    w: the weight, contraction axis first.
    hessian: ``2 X^T X`` of the layer's calibration inputs (see ``hessian_from_inputs``).
    bits: 2..8.
    group_size: rows sharing a scale (must divide K); None: one scale per column.
    act_order: process rows by decreasing ``diag(hessian)``.
    damp: dampening, as a fraction of the mean diagonal of H.
    block_size: rows per lazy-update block.
    symmetric: signed codes without zero point, else unsigned codes with a zero point.

  Returns:
    ``(codes int32 (K, N), scale float32 (groups, N), zero_point float32 (groups, N) or
    None)``, with ``groups = K // group_size`` (1 without groups).
  """
  _check("gptq_quantize", w, bits, group_size)
  if getattr(hessian, "shape", None) != (w.shape[0],) * 2:
    raise ValueError(f"gptq_quantize: hessian has shape {getattr(hessian, 'shape', hessian)}; "
                     f"w of shape {w.shape} needs ({w.shape[0]}, {w.shape[0]})")
  if not isinstance(block_size, int) or block_size <= 0:
    raise ValueError(f"gptq_quantize: block_size={block_size!r} is not allowed; use an int > 0")
  if not damp >= 0:
    raise ValueError(f"gptq_quantize: damp={damp!r} is not allowed; use a float >= 0")
  w0, perm, w, u = _prepare(jnp.asarray(w, jnp.float32), jnp.asarray(hessian, jnp.float32),
                            jnp.float32(damp), act_order=act_order)
  codes, scale, zero = _gptq_rows(w0, perm, w, u, jnp.float32(bits), group_size=group_size,
                                  dynamic=group_size is not None and not act_order,
                                  block_size=block_size, symmetric=symmetric)
  return codes, scale, zero if not symmetric else None


@functools.partial(jax.jit, static_argnames=("group_size", "symmetric"))
def _rtn(w, bits, *, group_size, symmetric):
  k, n = w.shape
  g = group_size or k
  groups = w.reshape(k // g, g, n)
  scale, zero = jax.vmap(lambda v: _grid(v, bits, symmetric))(groups)
  return _codes(groups, scale[:, None], zero[:, None], bits, symmetric).reshape(k, n), scale, zero


@jax.jit
def dequantize(codes: Array, scale: Array, zero_point: Array | None) -> Array:
  """``(codes - zero_point) * scale`` with each group's scale repeated over its rows."""
  reps = codes.shape[0] // scale.shape[0]
  zero = 0.0 if zero_point is None else jnp.repeat(zero_point, reps, axis=0)
  return (codes - zero) * jnp.repeat(scale, reps, axis=0)


def _check(who: str, w: Array, bits: int, group_size: int | None) -> None:
  """Raises ValueError, naming ``who`` and the value, for a bad weight, bits or group size."""
  if getattr(w, "ndim", None) != 2:
    raise ValueError(f"{who}: w must be a (K, N) matrix; got shape {getattr(w, 'shape', w)}")
  if not isinstance(bits, int) or bits not in BITS:
    raise ValueError(f"{who}: bits={bits!r} is not allowed; use an int in 2..8")
  if group_size is not None and (
      not isinstance(group_size, int) or group_size <= 0 or w.shape[0] % group_size):
    raise ValueError(f"{who}: group_size={group_size!r} is not allowed; use None or a "
                     f"positive int dividing K={w.shape[0]}")


def _grid(v: Array, bits, symmetric: bool) -> tuple[Array, Array]:
  """Per-column ``(scale, zero_point)`` (N,) for the rows ``v`` (rows, N); ``bits`` may be
  traced."""
  if symmetric:
    scale = jnp.max(jnp.abs(v), axis=0) / (2.0 ** (bits - 1) - 1)
    return jnp.maximum(scale, _EPS), jnp.zeros(v.shape[1])
  lo, hi = jnp.minimum(jnp.min(v, axis=0), 0.0), jnp.maximum(jnp.max(v, axis=0), 0.0)
  scale = jnp.maximum((hi - lo) / (2.0**bits - 1), _EPS)
  return scale, jnp.clip(-jnp.round(lo / scale), 0, 2.0**bits - 1)


def _codes(v: Array, scale: Array, zero: Array, bits, symmetric: bool) -> Array:
  """Integer codes of ``v`` on the grid ``(scale, zero)`` (broadcasting), as int32."""
  hi = 2.0 ** (bits - 1) - 1 if symmetric else 2.0**bits - 1
  lo = -hi if symmetric else 0.0
  return jnp.clip(jnp.round(v / scale) + zero, lo, hi).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="act_order")
def _prepare(w: Array, h: Array, damp: Array, *, act_order: bool):
  """Dead inputs zeroed, the row order, and the permuted ``w`` and ``U`` (``H^-1 = U^T U``).

  A jit of its own: it depends on neither bits nor groups, so it compiles once per shape.
  """
  dead = jnp.diag(h) == 0
  h = h + jnp.diag(dead.astype(h.dtype))
  w = jnp.where(dead[:, None], 0.0, w)
  perm = jnp.argsort(-jnp.diag(h), stable=True) if act_order else jnp.arange(w.shape[0])
  h = h[perm][:, perm]
  h = h + damp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0])
  h_inv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), jnp.eye(h.shape[0]))
  return w, perm, w[perm], jnp.linalg.cholesky(h_inv).T


@functools.partial(jax.jit, static_argnames=("group_size", "dynamic", "block_size", "symmetric"))
def _gptq_rows(w0, perm, w, u, bits, *, group_size, dynamic, block_size, symmetric):
  """The row loop on the permuted ``w`` and ``U``; ``w0`` (original order) gives the static
  scales. Returns codes in the original order, scale and zero point."""
  k, n = w.shape
  g = group_size or k
  grid = functools.partial(_grid, bits=bits, symmetric=symmetric)
  if dynamic:  # blocks of whole groups, so a group's rows are all up to date when it starts
    block_size = max(g, block_size // g * g)
    scale = zero = jnp.zeros((k // g, n), jnp.float32)
  else:  # scales fixed before any update: one group of K rows, or static groups
    scale, zero = jax.vmap(grid)(w0.reshape(k // g, g, n))

  def row_step(u1, grid_of_row):
    """fori body for row i of a block: quantize it, feed its error to the block's rows."""

    def step(i, carry):
      w1, codes1, err1 = carry
      s, z = grid_of_row(i)
      q = _codes(w1[i], s, z, bits, symmetric)
      e = (w1[i] - (q - z) * s) / u1[i, i]
      return w1 - jnp.outer(u1[i], e), codes1.at[i].set(q), err1.at[i].set(e)

    return step

  codes = jnp.zeros((k, n), jnp.int32)
  for i1 in range(0, k, block_size):
    i2 = min(i1 + block_size, k)
    u1 = u[i1:i2, i1:i2]
    carry = (w[i1:i2], jnp.zeros((i2 - i1, n), jnp.int32), jnp.zeros((i2 - i1, n), jnp.float32))
    if dynamic:

      def group(j, state, i1=i1, u1=u1):
        carry, scale, zero = state
        s, z = grid(lax.dynamic_slice_in_dim(carry[0], j * g, g))
        carry = lax.fori_loop(j * g, (j + 1) * g, row_step(u1, lambda i: (s, z)), carry)
        return carry, scale.at[i1 // g + j].set(s), zero.at[i1 // g + j].set(z)

      carry, scale, zero = lax.fori_loop(0, (i2 - i1) // g, group, (carry, scale, zero))
    else:
      group_of = perm[i1:i2] // g
      carry = lax.fori_loop(0, i2 - i1, row_step(u1, lambda i: (scale[group_of[i]],
                                                                  zero[group_of[i]])), carry)
    _, codes1, err1 = carry
    codes = codes.at[i1:i2].set(codes1)
    w = w.at[i2:].add(-jnp.matmul(u[i1:i2, i2:].T, err1, precision=_HIGHEST))
  return jnp.zeros_like(codes).at[perm].set(codes), scale, zero
