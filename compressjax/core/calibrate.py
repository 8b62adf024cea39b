"""Post-training calibration: run a few batches so static quantizers learn their ranges."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.compress import STATS


def calibrate(model: nn.Module, variables: dict, batches: Iterable[Any], *,
              collections: Sequence[str] = (STATS,), **apply_kwargs: Any) -> dict:
  """Returns ``variables`` with ``collections`` updated over ``batches`` (no gradient steps).

  Each batch is the model's first positional argument. The default updates quantizer
  statistics; pass eval-mode kwargs (``train=False``) so BatchNorm statistics stay as trained.
  ``collections=("batch_stats",), train=True`` re-estimates BatchNorm statistics instead.
  """

  @jax.jit
  def step(variables, x):
    _, updates = model.apply(variables, x, mutable=list(collections), **apply_kwargs)
    return {**variables, **updates}

  n = 0
  for x in batches:
    variables = step(variables, x)
    n += 1
  if n == 0:
    raise ValueError("calibrate needs at least one batch of calibration data; got none")
  return variables
