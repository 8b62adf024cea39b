"""Background prefetch: read, augment and place batches on the devices ahead of the step.

A thread pulls from the host iterator, applies ``put`` (e.g. ``jax.device_put`` with the batch
sharding, or ``jax.make_array_from_process_local_data``) and keeps up to ``size`` results in a
queue, so host work and transfers overlap the accelerator's step. Order is preserved (one
producer), so batches are the same as without prefetching.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_POLL_S = 0.1


class _Failed:
  """Carries an exception of the producer thread to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


_END = object()


def prefetch(items: Iterable[Any], size: int,
             put: Callable[[Any], Any] = lambda x: x) -> Iterator[Any]:
  """Yields ``put(item)`` for each item of ``items``, computed up to ``size`` items ahead.

  ``size=0`` applies ``put`` inline (no thread). An exception raised while producing is
  re-raised here, at the item where it happened. Closing the generator (``break`` out of a
  loop over it, or ``contextlib.closing``) stops the thread.
  """
  if size < 0:
    raise ValueError(f"prefetch size must be >= 0, got {size}")
  if size == 0:
    yield from map(put, items)
    return
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def offer(value: Any) -> bool:
    while not stop.is_set():
      try:
        ready.put(value, timeout=_POLL_S)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for item in items:
        if not offer(put(item)):
          return
      offer(_END)
    except BaseException as e:  # pylint: disable=broad-except
      offer(_Failed(e))

  thread = threading.Thread(target=produce, name="prefetch", daemon=True)
  thread.start()
  try:
    while True:
      value = ready.get()
      if value is _END:
        return
      if isinstance(value, _Failed):
        raise value.error
      yield value
  finally:
    stop.set()
    thread.join()
