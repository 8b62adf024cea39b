"""Evaluation over a whole split with fixed-shape (padded, masked) batches."""

import jax
import numpy as np
from jax.sharding import Mesh

from compressjax.train.batching import Split, batches
from compressjax.train.global_batches import process_rows, to_global
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


def evaluate(eval_step: EvalStep, state: TrainState, data: Split, batch_size: int, *,
             mesh: Mesh | None = None) -> dict[str, float]:
  """Means of the eval step's summed metrics over every example of ``data`` (no shuffling).

  With a ``mesh``, batches are padded to a multiple of its device count and split over it,
  each process reading only its rows; ``eval_step`` must return replicated sums (jit it with
  ``out_shardings``).
  """
  batch_size = min(batch_size, len(data))
  if mesh is not None:
    batch_size = -(-batch_size // mesh.size) * mesh.size
    data, local_size = process_rows(data, batch_size), batch_size // jax.process_count()
  totals = None
  for batch in batches(data, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False):
    if mesh is None:
      batch = pad_batch(batch, batch_size)
    else:
      batch = to_global(pad_batch(batch, local_size), mesh, batch_size)
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  count = totals.pop("count")
  return {k: float(v / count) for k, v in totals.items()}
