"""The datasets ``load_dataset`` knows, and how to find their prepared tfds builder.

Public tfds datasets are read from an array_record copy in ``data_dir``. Offline, a missing
copy fails at once with the command that prepares it (never a download that hangs).
"""

import dataclasses
import os

import tensorflow_datasets as tfds

from compressjax.data._quiet import quiet_tfds
from compressjax.data.digits import prepared_digits
from compressjax.data.download import download_and_prepare

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "compressjax", "tfds")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to load one dataset.

  Attributes:
    tfds_name: the tfds builder name.
    train_split, test_split: tfds split names; test_split None means a stratified 80/20 split
      of train_split, made by ``load_dataset`` from ``split_seed``.
    augment: default training augmentation ("none", "flip", "crop_flip").
    image_size: default square size (needed when images vary in size).
    in_memory: load into numpy arrays (else read lazily per batch).
    manual: extra preparation note (manual downloads).
  """

  tfds_name: str
  train_split: str = "train"
  test_split: str | None = "test"
  augment: str = "none"
  image_size: int | None = None
  in_memory: bool = True
  manual: str = ""


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", test_split=None),
    "mnist": DatasetSpec("mnist"),
    "fashion_mnist": DatasetSpec("fashion_mnist"),
    "cifar10": DatasetSpec("cifar10", augment="crop_flip"),
    "cifar100": DatasetSpec("cifar100", augment="crop_flip"),
    "imagenet2012": DatasetSpec(
        "imagenet2012", test_split="validation", augment="flip", image_size=224, in_memory=False,
        manual="first put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
        "{data_dir}/downloads/manual, then "),
}


def get_spec(name: str) -> DatasetSpec:
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
  return DATASETS[name]


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir``, else $COMPRESSJAX_DATA_DIR, else ~/.cache/compressjax/tfds; made absolute."""
  data_dir = data_dir or os.environ.get("COMPRESSJAX_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(data_dir))


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that prepares dataset ``name`` as array_record in ``data_dir``."""
  spec = get_spec(name)
  return (spec.manual.format(data_dir=data_dir) + f"run `tfds build {spec.tfds_name} "
          f"--data_dir={data_dir} --file_format=array_record` (needs internet and "
          "`pip install tensorflow` once)")


def prepared_builder(name: str, data_dir: str, download: bool = False) -> tfds.core.DatasetBuilder:
  """The builder of dataset ``name`` prepared as array_record in ``data_dir``.

  Digits is prepared on first use (it ships with scikit-learn). Other datasets are downloaded
  only if ``download`` (ConnectionError at once when offline, see
  :mod:`compressjax.data.download`); otherwise a missing copy raises FileNotFoundError naming
  the command that prepares it.
  """
  spec = get_spec(name)
  if name == "digits":
    return prepared_digits(data_dir)
  with quiet_tfds():
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    prepared = builder.is_prepared()
  if not prepared:
    if not download:
      raise FileNotFoundError(
          f"dataset {name!r} is not prepared in {data_dir}: {prepare_command(name, data_dir)}, "
          "or pass download=True (--set data.download=true) with internet access")
    download_and_prepare(builder, name, data_dir, prepare_command(name, data_dir))
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise FileNotFoundError(
        f"dataset {name!r} in {data_dir} is stored as {builder.info.file_format.value}, not "
        f"array_record: {prepare_command(name, data_dir + '_array_record')} and use that data_dir")
  return builder
