"""TFDS builder for scikit-learn's bundled digits: the offline default dataset.

1797 grayscale 8x8 images (values 0..16) of 10 classes, shipped inside scikit-learn, so the
demo and tests need no network. Prepared once as array_record (no TensorFlow needed) and read
back with ``as_data_source``. One "train" split holds all examples; ``load_dataset`` makes the
stratified train/test split from it.
"""

import fcntl
import os

import numpy as np
import tensorflow_datasets as tfds

from compressjax.data._quiet import quiet_tfds


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits (UCI optical recognition of handwritten digits, test part)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: one 'train' split with all 1797 images."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="8x8 grayscale handwritten digits bundled with scikit-learn.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with scikit-learn
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
      yield i, {"image": image.astype(np.uint8)[..., None], "label": int(label)}


def prepared_digits(data_dir: str) -> Digits:
  """Returns the digits builder in ``data_dir``, preparing it first if needed.

  A file lock makes concurrent first uses (parallel tests) prepare it once.
  """
  with quiet_tfds():
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
      return builder
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, ".digits.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = Digits(data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        builder.download_and_prepare()
  return builder
