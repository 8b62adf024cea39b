"""Metrics as JSON lines (one record per log event) in a run's workdir."""

import json
import os
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
  """Appends records to ``<workdir>/metrics.jsonl``.

  On (re)start, records past ``resume_step`` (written after the last checkpoint by a run that
  was then killed) are dropped, so a resumed run's log matches an uninterrupted one.
  """

  def __init__(self, workdir: str, *, resume_step: int):
    self.path = os.path.join(os.path.abspath(workdir), METRICS_FILE)
    kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a metrics file (a workdir or the file itself); [] if there is none."""
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
