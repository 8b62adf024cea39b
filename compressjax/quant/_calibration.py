"""Running statistics of static quantizers and the "never calibrated" check.

A quantizer whose ``fake`` reads running statistics (static :class:`Uniform` ranges,
:class:`FixedPoint` activation fractional lengths) keeps ``stats["count"]``: how many batches
``update`` has seen. It starts at 0, and such a quantizer is unusable until calibrated.
:func:`require_calibrated` raises on concrete stats (the core can call it outside ``jit``;
``fake`` calls it too). Under ``jit`` the count is abstract, so ``fake`` instead returns NaN
for uncalibrated stats: a loud failure rather than silently quantizing with a range of zero.
"""

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def require_calibrated(stats: dict[str, Array], name: str) -> None:
  """Raises ValueError if ``stats`` (concrete) belong to a quantizer never calibrated.

  Stats without a ``count`` (dynamic quantizers) always pass.
  """
  count = stats.get("count")
  if count is None or isinstance(count, jax.core.Tracer):
    return
  if np.any(np.asarray(count) == 0):
    raise ValueError(
        f"{name}: static quantizer statistics were never calibrated (count=0); run calibration "
        "batches through `update` (with the quant_stats collection mutable) before quantizing, "
        "or use a dynamic quantizer"
    )


def guard_calibrated(y: Array, stats: dict[str, Array], name: str) -> Array:
  """``y``, after :func:`require_calibrated`; NaN where an abstract ``count`` is 0."""
  require_calibrated(stats, name)
  return jnp.where(stats["count"] > 0, y, jnp.nan)


def running(old: Array, new: Array, count: Array, combine) -> Array:
  """``new`` on the first batch (``count == 0``), else ``combine(old, new)``."""
  return jnp.where(count == 0, new, combine(old, new))


def ema(momentum: float):
  """Combiner for :func:`running`: ``momentum * new + (1 - momentum) * old``."""
  return lambda old, new: momentum * new + (1.0 - momentum) * old
