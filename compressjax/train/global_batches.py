"""Global batches on a mesh: each process reads only its rows, JAX assembles the global array.

A global batch of ``batch_size`` rows is the one :func:`compressjax.train.batching.batches` defines (same
order, seeded by (seed, epoch)); process ``i`` of ``n`` reads rows ``[i*b/n, (i+1)*b/n)`` of it
and ``jax.make_array_from_process_local_data`` joins the pieces into one array sharded over
the mesh. With one process this is the whole batch: the same numbers as without a mesh.
"""

import dataclasses
import itertools
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from compressjax.train.batching import Augment, Batch, Split, batches
from compressjax.train.sharding import batch_sharding


@dataclasses.dataclass(frozen=True, eq=False)
class ProcessRows(Split):
  """``data`` as one process sees it: ``take`` of a global batch's indices reads only this
  process's share of every ``batch_size`` rows (possibly none, in a short last batch)."""

  data: Split
  batch_size: int
  index: int
  count: int

  def __len__(self) -> int:
    return len(self.data)

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    share = self.batch_size // self.count
    rows = np.asarray(indices)[self.index * share:(self.index + 1) * share]
    if len(rows) == 0:  # keep dtypes and trailing shapes
      images, labels = self.data.take(np.asarray(indices)[:1])
      return images[:0], labels[:0]
    return self.data.take(rows)


def process_rows(data: Split, batch_size: int) -> ProcessRows:
  """This process's view of ``data`` for global batches of ``batch_size``."""
  return ProcessRows(data, batch_size, jax.process_index(), jax.process_count())


def process_augment(augment: Augment | None) -> Augment | None:
  """With several processes, each augments its rows with its own child of the batch's
  generator (``Generator.spawn``), so hosts draw independent crops and flips."""
  index, count = jax.process_index(), jax.process_count()
  if augment is None or count == 1:
    return augment
  return lambda rng, images: augment(rng.spawn(count)[index], images)


def to_global(local: Batch, mesh: Mesh, batch_size: int) -> dict[str, jax.Array]:
  """Joins every process's ``local`` rows into arrays of ``batch_size`` rows on the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
          for k, v in local.items()}


def train_batches(data: Split, batch_size: int, *, seed: int, start_step: int,
                  steps_per_epoch: int, augment: Augment | None) -> Iterator[Batch]:
  """This process's rows of every training batch from global step ``start_step`` on, epoch
  after epoch without end (the loop decides when to stop)."""
  rows, augment = process_rows(data, batch_size), process_augment(augment)
  first_epoch, first_batch = divmod(start_step, steps_per_epoch)
  for epoch in itertools.count(first_epoch):
    yield from batches(rows, batch_size, seed=seed, epoch=epoch, augment=augment,
                       start=first_batch if epoch == first_epoch else 0)
