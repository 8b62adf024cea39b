"""``load_dataset``: one entry point for the offline digits and public tfds datasets.

Returns a ``Dataset`` of two splits (train, test) already normalised with per-channel
statistics of the train split, plus the metadata models need (classes, input shape).
"""

import dataclasses

import numpy as np

from compressjax.data.augment import Augment, get_augment
from compressjax.data.catalog import get_spec, prepared_builder, resolve_data_dir
from compressjax.data.preprocess import channel_stats, normalize, stack_images
from compressjax.data.splits import SourceSplit, read_records
from compressjax.train.batching import ArraySplit, Split

TEST_FRACTION = 0.2
STATS_SAMPLE = 4096  # examples used for mean/std of a lazily read train split
_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset ready for training.

  Attributes:
    name: the dataset name given to ``load_dataset``.
    train, test: the splits (``ArraySplit`` with ``.x``/``.y`` arrays when in memory).
    num_classes: number of labels.
    input_shape: (H, W, C) of one image.
    mean, std: per-channel normalisation constants (from the train split).
    augment: the default training augmentation for this dataset (None: off).
  """

  name: str
  train: Split
  test: Split
  num_classes: int
  input_shape: tuple[int, int, int]
  mean: np.ndarray
  std: np.ndarray
  augment: Augment | None


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    split_seed: int = 0,
    image_size: int | None = None,
    in_memory: bool | None = None,
    download: bool = False,
) -> Dataset:
  """Loads dataset ``name`` (digits, mnist, fashion_mnist, cifar10, cifar100, imagenet2012).

  Args:
    name: dataset name.
    data_dir: where prepared tfds data lives (default $COMPRESSJAX_DATA_DIR or
      ~/.cache/compressjax/tfds). Digits is prepared there on first use.
    split_seed: seed of the stratified 80/20 train/test split (datasets without a test split).
    image_size: resize images to this square size (default: the dataset's own).
    in_memory: load numpy arrays (True) or read examples lazily per batch (False); default
      per dataset (lazy only for ImageNet).
    download: download and prepare a missing public dataset (needs internet).

  Raises:
    ValueError: unknown name. FileNotFoundError: the dataset is not prepared in ``data_dir``.
  """
  spec = get_spec(name)
  builder = prepared_builder(name, resolve_data_dir(data_dir), download)
  sources = builder.as_data_source()
  image_size = image_size or spec.image_size
  in_memory = spec.in_memory if in_memory is None else in_memory
  if spec.test_split is None:
    source = sources[spec.train_split]
    labels = read_records(source, np.arange(len(source)))[1] if len(source) else np.zeros(0)
    train_idx, test_idx = stratified_split(labels, seed=split_seed)
    parts = (source, train_idx), (source, test_idx)
  else:
    parts = (sources[spec.train_split], None), (sources[spec.test_split], None)
  make = _array_splits if in_memory else _source_splits
  train, test, mean, std = make(parts, image_size)
  return Dataset(
      name=name,
      train=train,
      test=test,
      num_classes=builder.info.features["label"].num_classes,
      input_shape=tuple(train.take(np.arange(1))[0].shape[1:]),
      mean=mean,
      std=std,
      augment=get_augment(spec.augment),
  )


def stratified_split(labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (train, test) indices of a stratified 80/20 split, deterministic per seed.

  Each class contributes round(20%) of its examples, drawn by a generator seeded by ``seed``.
  """
  rng = np.random.default_rng(seed)
  test = [rng.permutation(np.flatnonzero(labels == c))[:round(TEST_FRACTION * np.sum(labels == c))]
          for c in np.unique(labels)]
  test = np.sort(np.concatenate(test))
  return np.setdiff1d(np.arange(len(labels)), test), test


def _read_all(source, indices: np.ndarray | None, image_size: int | None):
  """Reads (float32 NHWC images, int32 labels) of ``indices`` (None: all) in chunks."""
  rows = np.arange(len(source)) if indices is None else indices
  chunks = [read_records(source, rows[i:i + _READ_CHUNK]) for i in range(0, len(rows), _READ_CHUNK)]
  images = np.concatenate([stack_images(im, image_size) for im, _ in chunks])
  return images, np.concatenate([labels for _, labels in chunks])


def _array_splits(parts, image_size):
  (train_x, train_y), (test_x, test_y) = (_read_all(s, idx, image_size) for s, idx in parts)
  mean, std = channel_stats(train_x)
  train = ArraySplit(normalize(train_x, mean, std), train_y)
  return train, ArraySplit(normalize(test_x, mean, std), test_y), mean, std


def _source_splits(parts, image_size):
  (train_source, train_idx), (test_source, test_idx) = parts
  n = len(train_source) if train_idx is None else len(train_idx)
  sample = np.sort(np.random.default_rng(0).permutation(n)[:STATS_SAMPLE])
  rows = sample if train_idx is None else train_idx[sample]
  mean, std = channel_stats(_read_all(train_source, rows, image_size)[0])
  train = SourceSplit(train_source, mean, std, train_idx, image_size)
  return train, SourceSplit(test_source, mean, std, test_idx, image_size), mean, std
