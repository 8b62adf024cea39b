"""Checks shared by the quantizers: configs, operands, signedness and finite state.

Messages name the class and the offending value. Checks on values (operands, state) run on
concrete arrays only: under ``jit`` they are skipped, so they cost nothing in a compiled step.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from compressjax.quant.granularity import Granularity

Array = jax.Array
KINDS = ("weight", "activation")
CLIP_WARN_FRACTION = 0.01  # an unsigned quantizer clipping more calibration inputs than this warns


def check_kind(owner: object, kind: str) -> None:
  """Raises ValueError unless ``kind`` is ``"weight"`` or ``"activation"``."""
  if kind not in KINDS:
    raise ValueError(f"{type(owner).__name__}: kind={kind!r} is not allowed; use one of {KINDS}")


def check_granularity(owner: object, granularity: object, allowed: tuple[str, ...]) -> None:
  """Raises TypeError/ValueError unless ``granularity`` is a Granularity of an allowed kind."""
  name = type(owner).__name__
  if not isinstance(granularity, Granularity):
    raise TypeError(f"{name}: granularity={granularity!r} must be a Granularity")
  if granularity.kind not in allowed:
    raise ValueError(
        f"{name}: granularity {granularity.kind!r} is not allowed here; use one of {allowed}"
    )


def check_signed(owner: object, signed: object) -> None:
  """Raises ValueError unless ``signed`` is True, False or None (from calibration)."""
  if not isinstance(signed, (bool, type(None))):
    raise ValueError(
        f"{type(owner).__name__}: signed={signed!r} is not allowed; use True, False or None "
        "(decided from the calibration batch)"
    )


def check_operand(owner: object, x: Array, *, init: bool) -> None:
  """Raises TypeError for non-float operands, ValueError for an empty tensor at init.

  Quantizers compute scales in float: an integer tensor (token ids, uint8 pixels) would be
  silently rounded; cast it first. Init needs at least one element to calibrate on.
  """
  name = type(owner).__name__
  dtype = np.dtype(getattr(x, "dtype", np.float32))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"{name}: input dtype={dtype} is not allowed; quantizers take floating-point tensors "
        "(cast it, e.g. x.astype(jnp.float32))"
    )
  if init and np.size(x) == 0:
    raise ValueError(
        f"{name}: input shape={tuple(np.shape(x))} has no elements; initialise on a batch with "
        "at least one example and non-empty feature axes"
    )


def resolve_signed(signed: bool | None, kind: str) -> bool:
  """An explicit ``signed``, else signed weights and unsigned (post-ReLU) activations."""
  return kind == "weight" if signed is None else signed


def static_signed(signed: bool | None, kind: str) -> bool | None:
  """An explicit ``signed``; weights default to signed; None: activations decide at init."""
  return True if signed is None and kind == "weight" else signed


def signed_stat(x: Array) -> Array:
  """The calibrated sign decision (int32 0/1): 1 if ``x`` has a finite negative element."""
  x = jax.lax.stop_gradient(x)
  return jnp.any(jnp.isfinite(x) & (x < 0)).astype(jnp.int32)


def signed_of(owner: object, static: bool | None, stats: dict) -> bool | Array:
  """``static``, else the calibrated ``stats["signed"]`` as a boolean array."""
  if static is not None:
    return static
  if "signed" not in stats:
    raise ValueError(
        f"{type(owner).__name__}: signed=None decides the sign at init and keeps it in "
        f"stats['signed']; got stats with keys {sorted(stats)} (initialise on a real batch)"
    )
  return jnp.asarray(stats["signed"]) > 0


def warn_if_clipped(owner: object, x: Array, signed: bool | None) -> None:
  """Warns when an unsigned (``signed=False``) quantizer would clip many negative inputs."""
  if signed is not False or isinstance(x, jax.core.Tracer):
    return
  v = np.asarray(x, np.float32)
  finite = np.isfinite(v)
  frac = float(np.sum(finite & (v < 0)) / max(int(finite.sum()), 1))
  if frac > CLIP_WARN_FRACTION:
    warnings.warn(
        f"{type(owner).__name__}: unsigned activation quantizer clips {frac:.0%} of its "
        "calibration inputs (negative); use signed=True or None",
        stacklevel=3,
    )


def check_finite_state(owner: object, state: dict) -> None:
  """Raises ValueError naming a NaN/Inf learned value (a diverged step or clip level)."""
  for key, value in state.items():
    if isinstance(value, jax.core.Tracer):
      continue
    v = np.asarray(value, np.float32)
    if not np.all(np.isfinite(v)):
      bad = int(v.size - np.isfinite(v).sum())
      shown = float(v) if v.ndim == 0 else f"<{bad} NaN/Inf of {v.size}>"
      raise ValueError(
          f"{type(owner).__name__}: {key}={shown} is not finite; training diverged, so there is "
          f"no integer form to export (retrain, or re-initialise {key!r} from data)"
      )
