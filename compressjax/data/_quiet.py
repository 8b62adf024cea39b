"""Silences tfds chatter (progress bars, prints, absl warnings) around builder calls."""

import contextlib
import io
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Hides stdout/stderr writes and absl warnings such as "Variant folder ... has no
  dataset_info.json" (normal before a dataset is prepared); errors still propagate."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)
