"""Batch iteration: coverage, determinism, resumption, augmentation, lazy sources."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from compressjax.data import (ArraySplit, SourceSplit, batches, crop_flip, epoch_order, flip,
                              resize_images, steps_per_epoch)


def _split(n=50):
  x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 3, 1), np.float32)
  return ArraySplit(x, np.arange(n, dtype=np.int32))


def _labels(it):
  return [b["label"] for b in it]


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_every_example_once_per_epoch(drop_remainder):
  got = np.concatenate(_labels(batches(_split(), 8, seed=0, epoch=2,
                                       drop_remainder=drop_remainder)))
  assert len(np.unique(got)) == len(got) == (48 if drop_remainder else 50)
  assert got.dtype == np.int32


def test_order_depends_only_on_seed_and_epoch():
  a = np.concatenate(_labels(batches(_split(), 10, seed=1, epoch=0)))
  np.testing.assert_array_equal(a, np.concatenate(_labels(batches(_split(), 10, seed=1, epoch=0))))
  assert not np.array_equal(a, np.concatenate(_labels(batches(_split(), 10, seed=1, epoch=1))))
  assert not np.array_equal(a, np.concatenate(_labels(batches(_split(), 10, seed=2, epoch=0))))
  np.testing.assert_array_equal(epoch_order(5, seed=0, epoch=0, shuffle=False), np.arange(5))


def test_start_resumes_mid_epoch_with_same_batches_and_augmentation():
  full = list(batches(_split(), 10, seed=0, epoch=3, augment=flip))
  rest = list(batches(_split(), 10, seed=0, epoch=3, augment=flip, start=2))
  assert len(rest) == 3
  for a, b in zip(full[2:], rest):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_steps_per_epoch_rejects_bad_batch_sizes():
  assert steps_per_epoch(50, 8) == 6 and steps_per_epoch(50, 8, drop_remainder=False) == 7
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    steps_per_epoch(10, 0)
  with pytest.raises(ValueError, match="larger than the split"):
    steps_per_epoch(10, 11)


def test_crop_flip_is_a_shift_of_the_padded_image_maybe_flipped():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 5, 5, 2)).astype(np.float32)
  out = crop_flip(2)(np.random.default_rng(1), images)
  assert out.shape == images.shape
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(len(images)):
    views = [padded[i, dy:dy + 5, dx:dx + 5] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(out[i], v) or np.array_equal(out[i], v[:, ::-1]) for v in views)
  np.testing.assert_array_equal(out, crop_flip(2)(np.random.default_rng(1), images))


def test_resize_keeps_constant_images_constant():
  images = np.full((2, 5, 7, 3), 3.5, np.float32)
  out = resize_images(images, 4)
  assert out.shape == (2, 4, 4, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 3.5, rtol=1e-6)


class VarSizeImages(tfds.core.GeneratorBasedBuilder):
  """Images of different sizes, like ImageNet, stored as array_record."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(12):
      yield i, {"image": np.full((6 + i, 9, 3), i, np.uint8), "label": i % 3}


def test_source_split_reads_variable_size_images_lazily(tmp_path):
  builder = VarSizeImages(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source()["train"]
  mean, std = np.array([1.0, 1.0, 1.0], np.float32), np.array([2.0, 2.0, 2.0], np.float32)
  split = SourceSplit(source, mean, std, indices=np.arange(2, 12), image_size=4)
  got = list(batches(split, 4, seed=0, epoch=0, drop_remainder=False))
  assert [b["image"].shape for b in got] == [(4, 4, 4, 3), (4, 4, 4, 3), (2, 4, 4, 3)]
  images = np.concatenate([b["image"] for b in got])
  labels = np.concatenate([b["label"] for b in got])
  # Every image is constant, so its value identifies the example; labels must match.
  values = np.round(images[:, 0, 0, 0] * 2 + 1).astype(int)
  assert sorted(values) == sorted(int(source[r]["image"][0, 0, 0]) for r in range(2, 12))
  np.testing.assert_array_equal(labels, values % 3)
  with pytest.raises(ValueError, match="different shapes"):
    SourceSplit(source, mean, std).take(np.arange(3))
