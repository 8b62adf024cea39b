"""The stdlib_text builder on a tiny source tree: split by file, windows, metadata."""

import platform

import numpy as np
import pytest

from compressjax.data.stdlib_text import (SPLITS, StdlibTextConfig, corpus_files,
                                          prepared_stdlib_text, split_of)

WINDOW = 16


def _names() -> list[str]:
  """Module names, enough that every split gets at least two files (split_of is fixed)."""
  names, counts, i = [], dict.fromkeys(SPLITS, 0), 0
  while min(counts.values()) < 2:
    name = f"pkg{i % 3}/mod{i}.py"
    names.append(name)
    counts[split_of(name)] += 1
    i += 1
  return names


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("src")
  for i, name in enumerate(_names()):
    (root / name).parent.mkdir(exist_ok=True)
    (root / name).write_text(f"# module {i}\n" + "def f(x):\n    return x + %d\n" % i * (i % 4 + 1))
  for excluded in ("test/test_x.py", "site-packages/lib/y.py", "pkg0/tests/test_z.py"):
    (root / excluded).parent.mkdir(parents=True, exist_ok=True)
    (root / excluded).write_text("excluded = True\n")
  (root / "notes.txt").write_text("not python\n")
  return str(root)


@pytest.fixture(scope="module")
def config(source_dir):
  return StdlibTextConfig(name="tiny", window=WINDOW, train_bytes=400, eval_bytes=10**6,
                          source_dir=source_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def builder(config, data_dir):
  return prepared_stdlib_text(data_dir, config)


def _tokens(builder, split):
  source = builder.as_data_source(split=split)
  return np.stack([r["tokens"] for r in source.__getitems__(list(range(len(source))))])


def test_split_by_file_is_deterministic_and_disjoint(source_dir):
  files = corpus_files(source_dir)
  assert files == corpus_files(source_dir)
  every = [p for s in SPLITS for p in files[s]]
  assert sorted(every) == sorted(_names())  # disjoint, complete, no excluded dirs or non-.py
  assert all(split_of(p) == s for s in SPLITS for p in files[s])
  with pytest.raises(FileNotFoundError, match="missing"):
    corpus_files(source_dir + "/missing")


def test_windows_are_the_split_bytes_in_order(builder, source_dir):
  files = corpus_files(source_dir)
  for split in SPLITS:
    tokens = _tokens(builder, split)
    assert tokens.dtype == np.uint8 and tokens.ndim == 2 and tokens.shape[1] == WINDOW
    stream = b"".join(open(f"{source_dir}/{p}", "rb").read() for p in files[split])
    cap = 400 if split == "train" else len(stream)
    assert len(tokens) == min(cap, len(stream)) // WINDOW
    assert tokens.tobytes() == stream[: len(tokens) * WINDOW]


def test_metadata_records_version_hash_and_sizes(builder, source_dir, config, data_dir):
  meta = prepared_stdlib_text(data_dir, config).info.metadata  # read back from disk
  assert meta == builder.info.metadata
  assert meta["python_version"] == platform.python_version()
  assert meta["source"] == source_dir
  assert len(meta["corpus_sha256"]) == 64
  files = corpus_files(source_dir)
  assert meta["files"] == {s: len(files[s]) for s in SPLITS}
  assert meta["split_bytes"]["train"] == 400 // WINDOW * WINDOW
  for split in SPLITS:
    assert builder.info.splits[split].num_examples == meta["split_bytes"][split] // WINDOW
