"""Data: the offline digits dataset, public tfds datasets (array_record, no TensorFlow),
host-side preprocessing and augmentation; the splits' deterministic resumable batching is the
train layer's (:mod:`compressjax.train.batching`, re-exported here).

An application layer (needs the ``[data]`` and ``[train]`` extras: tensorflow-datasets,
scikit-learn, scikit-image); may import any layer of ``compressjax`` below it.
"""

from compressjax.data.augment import Augment, crop_flip, flip, get_augment
from compressjax.data.catalog import DATASETS, DatasetSpec, prepare_command, resolve_data_dir
from compressjax.data.dataset import Dataset, load_dataset, stratified_split
from compressjax.data.digits import Digits
from compressjax.data.preprocess import channel_stats, normalize, resize_images
from compressjax.data.splits import SourceSplit
from compressjax.data.stdlib_text import StdlibText, StdlibTextConfig, prepared_stdlib_text
from compressjax.train.batching import (ArraySplit, Batch, Split, batches, epoch_order,
                                        steps_per_epoch)

__all__ = [
    "DATASETS",
    "ArraySplit",
    "Augment",
    "Batch",
    "Dataset",
    "DatasetSpec",
    "Digits",
    "SourceSplit",
    "Split",
    "StdlibText",
    "StdlibTextConfig",
    "batches",
    "channel_stats",
    "crop_flip",
    "epoch_order",
    "flip",
    "get_augment",
    "load_dataset",
    "normalize",
    "prepare_command",
    "prepared_stdlib_text",
    "resize_images",
    "resolve_data_dir",
    "steps_per_epoch",
    "stratified_split",
]
