"""One entry point for quantized matmuls, ``matmul(x, w)``, choosing Pallas or XLA.

Heuristics when ``backend`` is None (see :func:`choose_backend`; untuned, no GPU/TPU measured yet):

* CPU (any platform but GPU/TPU): XLA always; Pallas would only run interpreted there.
* GPU/TPU, weight-only (W8A16/W4A16/W2A16): the Pallas kernel when
  ``M = prod(x.shape[:-1]) <= PALLAS_MAX_M[platform]``, the weight is stored in bytes (bits <= 8),
  its group size suits the lowering (GPU: a power of two >= 16, so tiles are powers of two; TPU:
  a multiple of 8 sublanes), and the tiles chosen by :func:`default_config` divide the weight
  (otherwise the kernel would copy a padded weight on every call). Why M: at small M the matmul
  is bound by reading the weight, which 2/4-bit storage cuts 4-8x against bf16; at large M it is
  bound by FLOPs, where XLA's vendor dot wins and dequantizing once is amortised.
* GPU/TPU, W8A8 (``act_bits=8``): the Pallas kernel under the same M and tiling rules, else
  XLA's int8 ``dot_general`` (cuBLASLt / MXU int8 is tuned for large M).

``backend`` forces one path: ``"pallas"`` (compiled for this platform; GPU/TPU only),
``"interpret"`` (the Pallas kernel in interpret mode, any platform), ``"xla"`` or
``"reference"`` (the plain-jnp definition).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.kernels import _pallas, w8a8, weight_only, xla
from compressjax.qarray import QArray, as_matrix

Array = jax.Array

BACKENDS = ("pallas", "xla", "interpret", "reference")
PALLAS_MAX_M = {"gpu": 64, "tpu": 128}
_W8A8_OFFSET = 128  # storage offset of signed 8-bit QArray codes


def matmul(
    x: Array,
    w: QArray | Array,
    *,
    backend: str | None = None,
    act_bits: int | None = None,
    out_dtype=None,
    config: _pallas.BlockConfig | None = None,
) -> Array:
  """``x @ dequantize(w)``: ``x (..., K)`` float, ``w`` a ``QArray`` (or float array) ``(K, N)``.

  Args:
    x: float32/bfloat16/float16 activations; all axes but the last are batch.
    w: the weight; a ``QArray`` of any rank is viewed as ``(K, N)`` (last axis = N).
    backend: None (choose by platform and shape) or one of ``BACKENDS``.
    act_bits: None for weight-only, 8 for W8A8 (per-token dynamic int8 activations; needs a
      signed 8-bit ``QArray`` with per-channel or per-tensor scales and no zero point).
    out_dtype: result dtype (default ``x.dtype``).
    config: Pallas tile sizes (default :func:`default_config`).

  Returns:
    ``(..., N)`` array of ``out_dtype``.
  """
  where = "matmul"
  if backend is not None and backend not in BACKENDS:
    raise ValueError(f"{where}: backend={backend!r} is not one of {BACKENDS} (or None)")
  if act_bits not in (None, 8):
    raise ValueError(f"{where}: act_bits={act_bits!r} is not allowed; use None or 8")
  x = jnp.asarray(x)
  _pallas.check_float(x, "x", where)
  if x.ndim < 1:
    raise ValueError(f"{where}: x must have at least one axis (..., K), got shape {x.shape}")
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  if not isinstance(w, QArray):
    return _float_matmul(x, jnp.asarray(w), backend, act_bits, out_dtype)
  _pallas.check_k(x.shape[-1], w.k, w.shape, where)
  x2 = x.reshape(-1, w.k)
  backend = backend or choose_backend(x2.shape[0], w, act_bits=act_bits)
  run = _w8a8 if act_bits == 8 else _weight_only
  return run(x2, w, backend, out_dtype, config).reshape(*x.shape[:-1], w.n)


def choose_backend(
    m: int, w: QArray, *, act_bits: int | None = None, platform: str | None = None
) -> str:
  """``"pallas"`` or ``"xla"`` for ``M = m`` rows on ``platform`` (module docstring rules)."""
  platform = _platform(platform or jax.default_backend())
  if platform not in PALLAS_MAX_M or m > PALLAS_MAX_M[platform]:
    return "xla"
  group = weight_only.effective_group(w)
  if act_bits == 8:
    ok, rows = _w8a8_weight_ok(w), w.k
  else:
    ok, rows = weight_only.supports(w) and _group_ok(group, platform), w.packed.shape[0]
  if not ok:
    return "xla"
  config = default_config(platform, m, w.n, rows, group=group)
  return "pallas" if _tiles_divide(config, w.n, rows, group) else "xla"


def default_config(
    platform: str, m: int, n: int, rows: int, *, group: int | None = None
) -> _pallas.BlockConfig:
  """Tiles for ``m`` rows, ``n`` columns and ``rows`` contraction rows (packed rows for
  weight-only kernels), preferring tiles that divide the weight so nothing is padded.

  GPU (Triton): power-of-two tiles, ``block_m`` 16..64, ``block_n`` 64 (decode) or 128,
  ``block_k`` 128, and ``split_k`` raising the program count towards two waves of SMs.
  TPU (Mosaic): ``block_n`` a multiple of 128 lanes, ``block_k`` up to 512, no split.
  Anything else (interpret mode): large tiles so the interpreter runs few programs.
  """
  platform = _platform(platform)
  floor = max(16, group or 16)
  if platform == "gpu":
    bm = min(64, max(16, _next_pow2(m)))
    bn = _fit(n, 64 if m <= 16 else 128, 16)
    bk = _fit(rows, max(128, floor), floor)
    programs = _pallas.cdiv(m, bm) * _pallas.cdiv(n, bn)
    want = _pallas.cdiv(2 * _core_count(), programs)
    blocks = _pallas.cdiv(rows, bk)
    split = max(d for d in range(1, min(want, blocks) + 1) if blocks % d == 0)
    return _pallas.BlockConfig(bm, bn, bk, split, num_warps=4, num_stages=3)
  if platform == "tpu":
    bm = min(256, _pallas.round_up(m, 16))
    return _pallas.BlockConfig(bm, _fit(n, 256, 128), _fit(rows, 512, max(128, floor)))
  return _pallas.BlockConfig(min(128, _pallas.round_up(m, 8)), 128, 128)


def _weight_only(x, w: QArray, backend: str, out_dtype, config) -> Array:
  if backend == "reference":
    return weight_only.weight_only_reference(x, w, out_dtype=out_dtype)
  if backend == "xla":
    return xla.weight_only_xla(x, w, out_dtype=out_dtype)
  group = weight_only.effective_group(w)
  config = config or default_config(
      _kernel_platform(backend), x.shape[0], w.n, w.packed.shape[0], group=group)
  return weight_only.weight_only_matmul(
      x, w, config=config, out_dtype=out_dtype, interpret=backend == "interpret")


def _w8a8(x, w: QArray, backend: str, out_dtype, config) -> Array:
  if not _w8a8_weight_ok(w):
    zero = None if w.zero_point is None else w.zero_point.shape
    raise ValueError(
        f"matmul(act_bits=8): w must be a signed 8-bit QArray with per-channel or per-tensor "
        f"scales and no zero point; got bits={w.bits}, signed={w.signed}, scale shape "
        f"{w.scale.shape}, zero_point shape {zero}"
    )
  x_q, x_scale = w8a8.quantize_rows(x)
  args = (x_q, x_scale, w.packed[: w.k], w.scale)
  kwargs = dict(w_offset=_W8A8_OFFSET, out_dtype=out_dtype)
  if backend == "reference":
    return w8a8.w8a8_reference(*args, **kwargs)
  if backend == "xla":
    return xla.w8a8_xla(*args, **kwargs)
  config = config or default_config(_kernel_platform(backend), x.shape[0], w.n, w.k)
  return w8a8.w8a8_matmul(*args, **kwargs, config=config, interpret=backend == "interpret")


def _float_matmul(x: Array, w: Array, backend, act_bits, out_dtype) -> Array:
  """An unquantized weight: a plain dot on every backend."""
  where = "matmul"
  _pallas.check_float(w, "w", where)
  if act_bits == 8:
    raise TypeError(
        f"{where}: act_bits=8 needs w to be a signed 8-bit QArray, got a {w.dtype} array; "
        "export the weight with QArray.from_codes first"
    )
  wm = as_matrix(w)
  _pallas.check_k(x.shape[-1], wm.shape[0], w.shape, where)
  if backend == "reference":
    y = jnp.dot(x.astype(jnp.float32), wm.astype(jnp.float32), precision=lax.Precision.HIGHEST)
  else:
    y = jnp.dot(x, wm.astype(x.dtype), preferred_element_type=jnp.float32)
  return y.astype(out_dtype)


def _w8a8_weight_ok(w: QArray) -> bool:
  return (w.bits == 8 and w.signed and w.zero_point is None and w.scale.shape[0] == 1
          and w.packed.dtype == jnp.uint8)


def _group_ok(group: int | None, platform: str) -> bool:
  if group is None:
    return True
  if platform == "gpu":
    return group >= 16 and group & (group - 1) == 0
  return group % 8 == 0


def _tiles_divide(config: _pallas.BlockConfig, n: int, rows: int, group: int | None) -> bool:
  bk = _pallas.round_up(config.block_k, group) if group else config.block_k
  return n % config.block_n == 0 and rows % (bk * config.split_k) == 0


def _fit(size: int, target: int, floor: int) -> int:
  """Largest power of two in ``[floor, target]`` dividing ``size``; ``target`` if none does."""
  p = _next_pow2(target) // (1 if _next_pow2(target) == target else 2)
  while p >= floor:
    if size % p == 0:
      return p
    p //= 2
  return target


def _next_pow2(v: int) -> int:
  return 1 << max(0, int(v) - 1).bit_length()


def _core_count() -> int:
  """Streaming multiprocessors of the first device (132 on H100/H200 when unknown)."""
  return int(getattr(jax.devices()[0], "core_count", 0) or 132)


def _platform(platform: str) -> str:
  return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def _kernel_platform(backend: str) -> str:
  return "interpret" if backend == "interpret" else _platform(jax.default_backend())
