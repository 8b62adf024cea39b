"""TFDS builder for an offline byte-level text corpus: the Python standard library's source.

The ``*.py`` files that ship with this interpreter (``sysconfig.get_paths()["stdlib"]``) are a
real, sizeable text corpus that needs no network. Files under ``site-packages`` and test
directories (``test``, ``tests``, ``idle_test``) are excluded: installed packages vary between
machines, and the test suite is mostly generated-looking boilerplate that would dominate it.

Each file goes to one split by a hash of its relative path (5% test, 5% validation, 90% train),
so the split is deterministic, disjoint by file and stable when files are added. Within a split
the files are concatenated in hash order (a fixed shuffle, so a byte cap keeps a mix of modules
rather than the alphabetically first ones), truncated to the split's byte cap, and cut into
non-overlapping windows of ``window`` bytes (tokens 0..255; the tail shorter than a window is
dropped); windows are stored in stream order. The info's metadata records the Python version,
the file and byte counts per split and a sha256 of the corpus content, so results can name
exactly what they were measured on.

Prepared once as array_record (no TensorFlow needed) and read back with ``as_data_source``.
"""

import dataclasses
import fcntl
import hashlib
import os
import pathlib
import platform
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from compressjax.data._quiet import quiet_tfds

SPLITS = ("train", "validation", "test")
EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests", "idle_test"})
_BUCKETS = 20  # hash buckets: 0 -> test, 1 -> validation, the rest -> train


@dataclasses.dataclass(eq=False, kw_only=True)
class StdlibTextConfig(tfds.core.BuilderConfig):
  """Which source tree, and how it is cut.

  Attributes:
    window: bytes per example.
    train_bytes: cap on the train split's bytes.
    eval_bytes: cap on the validation and test splits' bytes (each).
    source_dir: the tree of ``*.py`` files; None means this interpreter's standard library.
  """

  window: int = 128
  train_bytes: int = 6_000_000
  eval_bytes: int = 500_000
  source_dir: str | None = None


def split_of(relative_path: str) -> str:
  """The split a file belongs to, from a hash of its '/'-separated relative path."""
  bucket = int(hashlib.sha256(relative_path.encode()).hexdigest()[:8], 16) % _BUCKETS
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def corpus_files(source_dir: str) -> dict[str, list[str]]:
  """Relative paths of the corpus files per split, each list in its (hash) concatenation order."""
  root = pathlib.Path(source_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"stdlib_text: source_dir={source_dir!r} is not a directory")
  relative = sorted(
      p.relative_to(root).as_posix() for p in root.rglob("*.py")
      if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(root).parts[:-1])
  )
  files = {split: [] for split in SPLITS}
  for rel in relative:
    files[split_of(rel)].append(rel)
  order = lambda rel: hashlib.sha256(rel.encode()).hexdigest()
  return {split: sorted(paths, key=order) for split, paths in files.items()}


def split_bytes(source_dir: str, paths: list[str], cap: int, window: int) -> bytes:
  """The concatenated bytes of ``paths``, truncated to whole windows within ``cap``."""
  out, size = [], 0
  for rel in paths:
    if size >= cap:
      break
    data = (pathlib.Path(source_dir) / rel).read_bytes()
    out.append(data)
    size += len(data)
  stream = b"".join(out)
  return stream[: min(cap, len(stream)) // window * window]


def corpus_sha256(source_dir: str, files: dict[str, list[str]]) -> str:
  """sha256 over every corpus file's relative path and content, in sorted path order."""
  digest = hashlib.sha256()
  for rel in sorted(p for paths in files.values() for p in paths):
    digest.update(rel.encode() + b"\0")
    digest.update((pathlib.Path(source_dir) / rel).read_bytes())
  return digest.hexdigest()


class StdlibText(tfds.core.GeneratorBasedBuilder):
  """Byte windows of the Python standard library's source files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: train/validation/test split by file."}
  BUILDER_CONFIGS = [StdlibTextConfig(name="w128", description="128-byte windows")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Byte-level windows of the Python standard library's *.py source files.",
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(self.builder_config.window,), dtype=np.uint8),
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # windows stay in stream order
        homepage="https://docs.python.org/3/library/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with the interpreter
    cfg = self.builder_config
    source_dir = cfg.source_dir or sysconfig.get_paths()["stdlib"]
    files = corpus_files(source_dir)
    caps = {"train": cfg.train_bytes, "validation": cfg.eval_bytes, "test": cfg.eval_bytes}
    streams = {s: split_bytes(source_dir, files[s], caps[s], cfg.window) for s in SPLITS}
    self.info.metadata.update({
        "python_version": platform.python_version(),
        "source": "stdlib" if cfg.source_dir is None else cfg.source_dir,
        "corpus_sha256": corpus_sha256(source_dir, files),
        "files": {s: len(files[s]) for s in SPLITS},
        "corpus_bytes": {
            s: sum((pathlib.Path(source_dir) / p).stat().st_size for p in files[s]) for s in SPLITS
        },
        "split_bytes": {s: len(streams[s]) for s in SPLITS},
    })
    return {s: self._generate_examples(streams[s]) for s in SPLITS}

  def _generate_examples(self, stream: bytes):
    tokens = np.frombuffer(stream, np.uint8).reshape(-1, self.builder_config.window)
    for i, window in enumerate(tokens):
      yield i, {"tokens": window}


def prepared_stdlib_text(data_dir: str, config: str | StdlibTextConfig = "w128") -> StdlibText:
  """Returns the stdlib_text builder in ``data_dir``, preparing it first if needed.

  A file lock makes concurrent first uses (parallel tests) prepare it once.
  """
  with quiet_tfds():
    builder = StdlibText(data_dir=data_dir, config=config, file_format="array_record")
    if builder.is_prepared():
      return builder
    os.makedirs(data_dir, exist_ok=True)
    name = config if isinstance(config, str) else config.name
    with open(os.path.join(data_dir, f".stdlib_text_{name}.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = StdlibText(data_dir=data_dir, config=config, file_format="array_record")
      if not builder.is_prepared():
        builder.download_and_prepare()
  return builder
