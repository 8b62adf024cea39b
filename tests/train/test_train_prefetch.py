"""Background prefetch: same items in the same order, errors where they happen, clean stop."""

import contextlib
import threading

import jax
import numpy as np
import pytest

from compressjax.train import prefetch


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == "prefetch"]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_same_items_in_order_with_put_applied(size):
  batches = [{"x": np.full((2, 3), i, np.float32)} for i in range(7)]
  got = list(prefetch(iter(batches), size, put=jax.device_put))
  assert len(got) == 7
  for i, batch in enumerate(got):
    assert isinstance(batch["x"], jax.Array)
    np.testing.assert_array_equal(batch["x"], batches[i]["x"])
  assert not _prefetch_threads()


def test_error_in_the_producer_is_raised_at_its_item():
  def items():
    yield 1
    yield 2
    raise OSError("disk gone")

  stream = prefetch(items(), 2)
  assert [next(stream), next(stream)] == [1, 2]
  with pytest.raises(OSError, match="disk gone"):
    next(stream)
  assert not _prefetch_threads()


def test_closing_early_stops_the_thread_of_an_endless_stream():
  def endless():
    i = 0
    while True:
      yield i
      i += 1

  with contextlib.closing(prefetch(endless(), 2, put=lambda i: i * 10)) as stream:
    assert [next(stream) for _ in range(5)] == [0, 10, 20, 30, 40]
    assert len(_prefetch_threads()) == 1
  assert not _prefetch_threads()


def test_negative_size_is_refused():
  with pytest.raises(ValueError, match="prefetch size must be >= 0, got -1"):
    next(prefetch([1], -1))
