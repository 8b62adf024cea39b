"""The non-finite policy: NaN/Inf weights are refused where they would silently break numbers.

Weights are checked (on concrete values) at calibration, init-from-float and export, and the
error names the first bad parameter; export also refuses non-finite transform state (steps,
clip levels) naming the site. ``compress(..., checks=True)`` adds the same checks at step time
(:func:`check_site`, via ``jax.experimental.checkify``): run the step through :func:`checked`
(or your own ``checkify.checkify``) and a NaN/Inf weight, step or clip level raises naming the
site.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from compressjax.core.tree_paths import flat_paths


def check_finite(tree: Any, where: str) -> None:
  """Raises ValueError naming the first leaf of ``tree`` with a NaN or Inf (concrete leaves)."""
  for path, leaf in flat_paths(tree):
    if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype"):
      continue
    if not np.issubdtype(np.dtype(leaf.dtype), np.floating) and leaf.dtype != jax.numpy.bfloat16:
      continue
    values = np.asarray(leaf, dtype=np.float32)
    if not np.all(np.isfinite(values)):
      bad = int(np.size(values) - np.isfinite(values).sum())
      raise ValueError(
          f"{where}: parameter {path!r} of shape {tuple(values.shape)} has {bad} NaN/Inf "
          "values; compressjax refuses non-finite weights (fix or re-initialise them)")


def _is_float(leaf: Any) -> bool:
  return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def check_transform_state(site: str, operand: str, state: Any, where: str = "export") -> None:
  """Raises ValueError naming ``site`` if its ``operand`` transform's state (steps, clip levels,
  calibrated ranges) holds a NaN or Inf (concrete leaves)."""
  for path, leaf in flat_paths(state):
    if isinstance(leaf, jax.core.Tracer) or not _is_float(leaf):
      continue
    values = np.asarray(leaf, dtype=np.float32)
    if not np.all(np.isfinite(values)):
      raise ValueError(
          f"{where} of site {site!r}: its {operand} transform state {path!r} = "
          f"{values.ravel()[:4].tolist()} is not finite; re-initialise or re-calibrate it")


def check_site(site: str, operand: str, x: Any, params: Any, is_weight: bool) -> None:
  """Step-time checks of one operand (``checks=True``): a finite weight and finite transform
  parameters, as ``checkify`` errors naming the site."""
  name = site.replace("{", "{{").replace("}", "}}")
  if is_weight and _is_float(x):
    checkify.check(jnp.all(jnp.isfinite(x)), f"site {name!r}: the weight has NaN/Inf values")
  for path, leaf in flat_paths(params):
    if _is_float(leaf):
      checkify.check(jnp.all(jnp.isfinite(leaf)),
                     f"site {name!r}: {operand} transform parameter {path!r} is NaN/Inf")


def checked(fn):
  """``fn`` (jitted) with the ``checks=True`` errors raised: ``checkify`` over it, then throw."""
  run = jax.jit(checkify.checkify(fn))

  def call(*args, **kwargs):
    err, out = run(*args, **kwargs)
    err.throw()
    return out

  return call
