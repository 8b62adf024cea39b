"""Post-training calibration: run a few batches so static quantizers learn their ranges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax

from compressjax.core.checks import check_finite
from compressjax.core.compress import STATS, lean_jit


def calibrate(model: Any, variables: dict | None, batches: Iterable[Any], *,
              collections: Sequence[str] = (STATS,), **apply_kwargs: Any):
  """Updates ``collections`` over ``batches`` (no gradient steps).

  Linen: returns the new ``variables``. NNX (a compressed module; pass ``variables=None``):
  updates the module's statistics in place and returns it. Each batch is the model's first
  positional argument. The default updates quantizer statistics; pass eval-mode kwargs
  (``train=False``) so BatchNorm statistics stay as trained; ``collections=("batch_stats",),
  train=True`` re-estimates BatchNorm statistics instead (Linen).
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(model, nnx.Module):
    return _calibrate_nnx(model, batches, **apply_kwargs)
  check_finite(variables.get("params", {}), "calibrate")

  def step(variables, x):  # returns the updated collections only: the rest is not copied
    return model.apply(variables, x, mutable=list(collections), **apply_kwargs)[1]

  n, compiled = 0, lean_jit(step, variables)
  for x in batches:
    variables = {**variables, **compiled(variables, x)}
    n += 1
  if n == 0:
    raise ValueError("calibrate needs at least one batch of calibration data; got none")
  return variables


def _calibrate_nnx(model, batches, **kwargs):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  check_finite(nnx.state(model, nnx.Param), "calibrate")
  saved = model.use_running_average
  model.use_running_average = False

  def step(params, rest, x):  # returns the non-parameter state only: params are not copied
    m = nnx.merge(graphdef, params, rest)
    m(x, **kwargs)
    return nnx.state(m, nnx.Not(nnx.Param))

  try:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    n, compiled = 0, lean_jit(step, params, rest)
    for x in batches:
      rest = compiled(params, rest, x)
      n += 1
    nnx.update(model, rest)
  finally:
    model.use_running_average = saved
  if n == 0:
    raise ValueError("calibrate needs at least one batch of calibration data; got none")
  return model
