"""Splits: indexable (image, label) collections that batches are drawn from.

``ArraySplit`` holds normalised float32 NHWC images and int32 labels in memory. ``SourceSplit``
reads examples lazily by index from a tfds data source (array_record), so datasets larger than
memory (ImageNet) are iterated the same way as small ones.
"""

import abc
import dataclasses
from typing import Any

import numpy as np

from compressjax.data.preprocess import normalize, stack_images


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
