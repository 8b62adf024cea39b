"""Post-training calibration: run a few batches so static quantizers learn their ranges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax

from compressjax.core.compress import STATS


def calibrate(model: nn.Module, variables: dict, batches: Iterable[Any], **apply_kwargs: Any) -> dict:
  """Returns ``variables`` with ``quant_stats`` updated over ``batches`` (no training).

  Each batch is the model's first positional argument; pass eval-mode kwargs (``train=False``)
  so BatchNorm statistics stay as trained.
  """

  @jax.jit
  def step(variables, x):
    _, updates = model.apply(variables, x, mutable=[STATS], **apply_kwargs)
    return {**variables, **updates}

  n = 0
  for x in batches:
    variables = step(variables, x)
    n += 1
  if n == 0:
    raise ValueError("calibrate needs at least one batch of calibration data; got none")
  return variables
