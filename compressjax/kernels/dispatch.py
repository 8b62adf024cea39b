"""One entry point for quantized matmuls, ``matmul(x, w)``, choosing Pallas or XLA.

With ``backend=None`` the choice comes from a measured table (see ``tables``; written by
``benchmarks/matmul_device.py`` on the device itself) and nothing else:

* CPU (any platform but GPU/TPU): XLA; Pallas would only run interpreted there.
* GPU/TPU without a committed table for ``jax.devices()[0].device_kind``: XLA. Nothing is
  guessed: an unmeasured kernel can lose to XLA (dispatch, tails, a slow lowering).
* With a table: the entry for this weight (bits, group, zero point, K, N) at the smallest
  measured M >= ``M``; Pallas (with the measured tiles) only if it was faster than both the XLA
  fallback and an XLA bf16 ``jnp.dot`` of that shape, otherwise XLA. No entry: XLA.
* Weights a kernel cannot read go to XLA: codes wider than 8 bits; for the GPU kernel group
  sizes that are not powers of two >= 16; for W8A8 (``act_bits=8``) anything but a signed 8-bit
  weight with per-channel scales and no zero point.

``choose_backend(..., explain=True)`` and ``matmul(..., explain=True)`` also return the reason.
``backend`` forces one path: ``"pallas"`` (compiled for this platform; GPU/TPU only),
``"interpret"`` (the Pallas kernel in interpret mode, any platform), ``"xla"`` or
``"reference"`` (the plain-jnp definition).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from compressjax.kernels import _pallas, tables, w8a8, weight_only, xla
from compressjax.kernels.tiles import default_config
from compressjax.qarray import QArray, as_matrix

Array = jax.Array

BACKENDS = ("pallas", "xla", "interpret", "reference")
_W8A8_OFFSET = 128  # storage offset of signed 8-bit QArray codes


@dataclasses.dataclass(frozen=True)
class Choice:
  """A dispatch decision: the backend, why, and the measured tiles (None: defaults)."""

  backend: str
  reason: str
  config: _pallas.BlockConfig | None = None


def matmul(
    x: Array,
    w: QArray | Array,
    *,
    backend: str | None = None,
    act_bits: int | None = None,
    out_dtype=None,
    config: _pallas.BlockConfig | None = None,
    table: tables.Table | None = None,
    explain: bool = False,
):
  """``x @ dequantize(w)``: ``x (..., K)`` float, ``w`` a ``QArray`` (or float array) ``(K, N)``.

  Args:
    x: float32/bfloat16/float16 activations; all axes but the last are batch.
    w: the weight; a ``QArray`` of any rank is viewed as ``(K, N)`` (last axis = N).
    backend: None (choose, see the module docstring) or one of ``BACKENDS``.
    act_bits: None for weight-only, 8 for W8A8 (per-token dynamic int8 activations; needs a
      signed 8-bit ``QArray`` with per-channel or per-tensor scales and no zero point).
    out_dtype: result dtype (default ``x.dtype``).
    config: Pallas tiles (default: the measured ones, else :func:`default_config`).
    table: measured table to choose from (default: the committed one for this device).
    explain: also return the reason for the backend, as ``(y, reason)``.

  Returns:
    ``(..., N)`` array of ``out_dtype`` (and the reason string with ``explain``).
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
    y = _float_matmul(x, jnp.asarray(w), backend, act_bits, out_dtype)
    return (y, "float weight: a plain dot") if explain else y
  _pallas.check_k(x.shape[-1], w.k, w.shape, where)
  x2 = x.reshape(-1, w.k)
  if backend is None:
    choice = _choose(x2.shape[0], w, act_bits, jax.default_backend(), _device_kind(), table)
  else:
    choice = Choice(backend, f"backend={backend!r} forced by the caller")
  run = _w8a8 if act_bits == 8 else _weight_only
  y = run(x2, w, choice.backend, out_dtype, config or choice.config)
  y = y.reshape(*x.shape[:-1], w.n)
  return (y, choice.reason) if explain else y


def choose_backend(
    m: int, w: QArray, *, act_bits: int | None = None, platform: str | None = None,
    device_kind: str | None = None, table: tables.Table | None = None, explain: bool = False,
):
  """``"pallas"`` or ``"xla"`` for ``M = m`` rows (rules in the module docstring).

  ``platform`` defaults to this host's; ``device_kind`` (which committed table to read)
  defaults to this host's device when ``platform`` is this host's, else none is read.
  ``table`` overrides the lookup. With ``explain`` returns ``(backend, reason)``.
  """
  current = jax.default_backend()
  platform = platform or current
  if device_kind is None and _platform(platform) == _platform(current):
    device_kind = _device_kind()
  choice = _choose(m, w, act_bits, platform, device_kind, table)
  return (choice.backend, choice.reason) if explain else choice.backend


def _choose(m: int, w: QArray, act_bits, platform: str, device_kind: str | None,
            table: tables.Table | None) -> Choice:
  platform = _platform(platform)
  if platform not in ("gpu", "tpu"):
    return Choice("xla", f"platform {platform!r}: Pallas kernels would only run interpreted; XLA")
  group = weight_only.effective_group(w)
  kind = "w8a8" if act_bits == 8 else "weight_only"
  unreadable = _unreadable(w, kind, group, platform)
  if unreadable:
    return Choice("xla", f"{unreadable}; XLA")
  if table is None:
    table = tables.find_table(device_kind) if device_kind else None
    if table is None:
      return Choice("xla", f"no measured table for {device_kind or platform}; XLA")
  zero = w.zero_point is not None
  what = f"{kind} w{w.bits} group={group} zero_point={zero} K={w.k} N={w.n}"
  entry = table.lookup(kind, w.bits, group, zero, m, w.k, w.n)
  if entry is None:
    return Choice("xla", f"table {table.device_kind!r} has no entry for {what} at M >= {m}; XLA")
  us = entry.us
  times = ", ".join(f"{b} {t:.1f} us" for b, t in sorted(us.items()))
  head = f"table {table.device_kind!r}, {what}, measured at M={entry.m}: {times}"
  pallas, rivals = us.get("pallas"), [us[b] for b in ("xla", "bf16") if b in us]
  if pallas is None:
    return Choice("xla", f"{head}; Pallas not measured; XLA")
  if rivals and pallas >= min(rivals):
    return Choice("xla", f"{head}; Pallas not faster than XLA and the bf16 dot; XLA")
  return Choice("pallas", f"{head}; Pallas", entry.config)


def _unreadable(w: QArray, kind: str, group: int | None, platform: str) -> str | None:
  """Why the Pallas kernel cannot take this weight, or None."""
  if kind == "w8a8":
    return None if _w8a8_weight_ok(w) else "W8A8 kernel needs a signed per-channel int8 weight"
  if not weight_only.supports(w):
    return f"{w.bits}-bit codes are stored as {w.packed.dtype}; the kernel reads bytes"
  if group is not None and not _group_ok(group, platform):
    allowed = "a power of two >= 16" if platform == "gpu" else "a multiple of 8"
    return f"group size {group} is not {allowed} ({platform} kernel)"
  return None


def _weight_only(x, w: QArray, backend: str, out_dtype, config) -> Array:
  if backend == "reference":
    return weight_only.weight_only_reference(x, w, out_dtype=out_dtype)
  if backend == "xla":
    return xla.weight_only_xla(x, w, out_dtype=out_dtype)
  group = weight_only.effective_group(w)
  platform = _kernel_platform(backend)
  config = config or default_config(platform, x.shape[0], w.n, w.packed.shape[0], group=group)
  interpret = backend == "interpret"
  return weight_only.weight_only_matmul(
      x, w, config=config, out_dtype=out_dtype, interpret=interpret,
      platform=None if interpret else platform)


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


def _device_kind() -> str:
  return jax.devices()[0].device_kind


def _platform(platform: str) -> str:
  return "gpu" if platform in ("gpu", "cuda", "rocm") else platform


def _kernel_platform(backend: str) -> str:
  return "interpret" if backend == "interpret" else _platform(jax.default_backend())
