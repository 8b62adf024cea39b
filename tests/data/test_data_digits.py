"""load_dataset on the offline digits dataset, the stratified split and offline failures."""

import numpy as np
import pytest

from compressjax.data import load_dataset, resolve_data_dir, stratified_split


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(data_dir):
  return load_dataset("digits", data_dir=data_dir)


def test_digits_arrays_and_metadata(digits):
  assert (len(digits.train), len(digits.test)) == (1438, 359)  # 20% of each class, rounded
  assert digits.num_classes == 10 and digits.input_shape == (8, 8, 1)
  assert digits.train.x.dtype == np.float32 and digits.train.x.shape == (1438, 8, 8, 1)
  assert digits.train.y.dtype == np.int32 and set(digits.train.y) == set(range(10))
  np.testing.assert_allclose(digits.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(digits.train.x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
  assert digits.augment is None


def test_split_is_stratified_disjoint_and_deterministic():
  labels = np.repeat(np.arange(5), [50, 30, 20, 40, 60])
  train, test = stratified_split(labels, seed=3)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
  np.testing.assert_array_equal(np.bincount(labels[test]), [10, 6, 4, 8, 12])
  again = stratified_split(labels, seed=3)
  np.testing.assert_array_equal(test, again[1])
  assert not np.array_equal(test, stratified_split(labels, seed=4)[1])


def test_digits_split_seeds(digits, data_dir):
  other = load_dataset("digits", data_dir=data_dir, split_seed=1)
  counts = np.bincount(digits.test.y, minlength=10)
  all_counts = counts + np.bincount(digits.train.y, minlength=10)
  np.testing.assert_array_equal(counts, np.round(0.2 * all_counts))
  assert not np.array_equal(digits.test.y, other.test.y) or not np.array_equal(
      digits.test.x, other.test.x)
  same = load_dataset("digits", data_dir=data_dir, split_seed=0)
  np.testing.assert_array_equal(same.test.x, digits.test.x)


def test_lazy_digits_match_in_memory(digits, data_dir):
  lazy = load_dataset("digits", data_dir=data_dir, in_memory=False)
  assert len(lazy.train) == len(digits.train)
  np.testing.assert_allclose(lazy.mean, digits.mean, rtol=1e-6)
  idx = np.array([5, 0, 1437, 77])
  x, y = lazy.train.take(idx)
  np.testing.assert_allclose(x, digits.train.x[idx], atol=1e-5)
  np.testing.assert_array_equal(y, digits.train.y[idx])


def test_resize(data_dir):
  ds = load_dataset("digits", data_dir=data_dir, image_size=16)
  assert ds.input_shape == (16, 16, 1) and ds.train.x.shape[1:] == (16, 16, 1)


def test_unknown_dataset_lists_allowed_names(data_dir):
  with pytest.raises(ValueError, match=r"unknown dataset 'nope'; allowed: digits, mnist.*cifar10"):
    load_dataset("nope", data_dir=data_dir)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet2012"])
def test_missing_public_dataset_fails_fast_with_command(tmp_path, name):
  with pytest.raises(FileNotFoundError) as info:
    load_dataset(name, data_dir=str(tmp_path))
  message = str(info.value)
  assert "\n" not in message and f"is not prepared in {tmp_path}" in message
  assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message


def test_data_dir_env(monkeypatch, tmp_path):
  monkeypatch.setenv("COMPRESSJAX_DATA_DIR", str(tmp_path))
  assert resolve_data_dir(None) == str(tmp_path)
  assert resolve_data_dir("rel") == str(tmp_path.cwd() / "rel")
