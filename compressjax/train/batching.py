"""What ``fit`` trains on: splits (indexable (image, label) collections) and their deterministic,
resumable batches.

The order of epoch ``e`` is a permutation seeded by (seed, e) alone, and augmentation of batch
``b`` is seeded by (seed, e, b), so a run restarted at (epoch, batch) sees exactly the batches
an uninterrupted run would have seen. ``ArraySplit`` wraps arrays already in memory; the data
application (:mod:`compressjax.data`) adds lazy splits over tfds sources and the augmentations.
"""

import abc
import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]
# ``f(rng, images) -> images`` with an explicit numpy Generator, seeded per batch.
Augment = Callable[[np.random.Generator, np.ndarray], np.ndarray]


class Split(abc.ABC):
  """A sized collection of examples; ``take(indices)`` returns (images, labels) as numpy."""

  @abc.abstractmethod
  def __len__(self) -> int:
    ...

  @abc.abstractmethod
  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns float32 NHWC normalised images and int32 labels at ``indices``."""


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit(Split):
  """An in-memory split: ``x`` float32 NHWC (normalised), ``y`` int32 labels."""

  x: np.ndarray
  y: np.ndarray

  def __post_init__(self):
    if len(self.x) != len(self.y):
      raise ValueError(f"ArraySplit: x has {len(self.x)} examples but y has {len(self.y)}")

  def __len__(self) -> int:
    return len(self.y)

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.x[indices], self.y[indices]


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Number of batches one epoch yields."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  steps = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
  if steps == 0:
    raise ValueError(f"batch_size {batch_size} is larger than the split ({num_examples} examples)")
  return steps


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """Example order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batches(
    data: Split,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
    augment: Augment | None = None,
    start: int = 0,
) -> Iterator[Batch]:
  """Yields ``{"image": float32 NHWC, "label": int32}`` batches of one epoch.

  Args:
    data: the split to iterate.
    batch_size: examples per batch.
    seed, epoch: select the epoch's shuffle order and augmentation randomness.
    shuffle: shuffle the order (training) or keep it (evaluation).
    drop_remainder: drop the last partial batch so every batch has the same shape.
    augment: optional ``f(rng, images) -> images`` applied per batch.
    start: index of the first batch to yield (resuming mid-epoch).
  """
  order = epoch_order(len(data), seed=seed, epoch=epoch, shuffle=shuffle)
  for b in range(start, steps_per_epoch(len(data), batch_size, drop_remainder)):
    images, labels = data.take(order[b * batch_size:(b + 1) * batch_size])
    if augment is not None:
      images = augment(np.random.default_rng([seed, epoch, b]), images)
    yield {"image": images, "label": labels}
