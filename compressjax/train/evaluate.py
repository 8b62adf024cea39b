"""Evaluation over a whole split with fixed-shape (padded, masked) batches."""

import jax
import numpy as np

from compressjax.data import Split, batches
from compressjax.train.state import TrainState
from compressjax.train.steps import EvalStep


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads a short batch to ``batch_size`` with zeros and adds a 0/1 "mask" entry.

  Every batch then has one shape, so the jitted eval step compiles once.
  """
  n = len(batch["label"])
  padded = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()}
  padded["mask"] = (np.arange(batch_size) < n).astype(np.float32)
  return padded


def evaluate(eval_step: EvalStep, state: TrainState, data: Split,
             batch_size: int) -> dict[str, float]:
  """Means of the eval step's summed metrics over every example of ``data`` (no shuffling)."""
  batch_size = min(batch_size, len(data))
  totals = None
  for batch in batches(data, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False):
    sums = eval_step(state, pad_batch(batch, batch_size))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  count = totals.pop("count")
  return {k: float(v / count) for k, v in totals.items()}
