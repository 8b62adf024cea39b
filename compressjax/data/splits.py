"""Lazy splits: ``SourceSplit`` reads examples by index from a tfds data source (array_record),
so datasets larger than memory (ImageNet) are iterated the same way as the in-memory
``ArraySplit`` of :mod:`compressjax.train.batching`.
"""

import dataclasses
from typing import Any

import numpy as np

from compressjax.data.preprocess import normalize, stack_images
from compressjax.train.batching import Split


@dataclasses.dataclass(frozen=True, eq=False)
class SourceSplit(Split):
  """A lazy split over a tfds data source (anything with ``__len__`` and ``__getitems__``).

  Attributes:
    source: the data source; records are dicts with "image" (HWC uint8) and "label".
    mean, std: per-channel normalisation constants.
    indices: which source records form this split (None: all of them, in order).
    image_size: resize every image to this square size (needed for variable-size images).
  """

  source: Any
  mean: np.ndarray
  std: np.ndarray
  indices: np.ndarray | None = None
  image_size: int | None = None

  def __len__(self) -> int:
    return len(self.source) if self.indices is None else len(self.indices)

  def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices)
    rows = indices if self.indices is None else self.indices[indices]
    images, labels = read_records(self.source, rows)
    return normalize(stack_images(images, self.image_size), self.mean, self.std), labels


def read_records(source: Any, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
  """Reads records ``rows`` of a data source; returns (list of HWC images, int32 labels)."""
  records = source.__getitems__([int(r) for r in rows])  # tfds wants a Python list of ints
  images = [np.asarray(r["image"]) for r in records]
  return images, np.asarray([r["label"] for r in records], np.int32)
