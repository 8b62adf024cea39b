"""Downloading a public tfds dataset: fails fast offline, and leaves nothing behind on failure.

tfds retries an unreachable host for minutes, then leaves temporary folders in ``data_dir``.
Before downloading, :func:`download_and_prepare` checks that the dataset's hosts answer (a
TCP connect with a short timeout); if the download fails anyway, every path it created under
``data_dir`` is removed and one line says why.
"""

import os
import shutil
import socket
import threading
import time
import urllib.parse

GCS_HOST = "storage.googleapis.com"  # tfds tries its prepared copy there first
PROBE_TIMEOUT_S = 3.0


def download_and_prepare(builder, name: str, data_dir: str, how_to_prepare: str) -> None:
  """``builder.download_and_prepare()``; ConnectionError (one line) if offline or it fails."""
  hosts = _hosts(builder)
  if not _any_reachable(hosts):
    raise ConnectionError(
        f"dataset {name!r}: data.download=true but none of its hosts ({', '.join(hosts)}) "
        f"answers within {PROBE_TIMEOUT_S:.0f} s (offline?); to prepare it, {how_to_prepare}")
  existed, before = os.path.isdir(data_dir), _paths(data_dir)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    if existed:
      _remove_new(data_dir, before)
    else:
      shutil.rmtree(data_dir, ignore_errors=True)
    reason = " ".join(str(e).split())[:300] or type(e).__name__
    raise ConnectionError(f"dataset {name!r}: download into {data_dir} failed ({reason}); "
                          f"nothing was left behind; to prepare it, {how_to_prepare}") from e


def _hosts(builder) -> list[str]:
  urls = builder.url_infos or {}
  hosts = {urllib.parse.urlparse(u).hostname for u in urls} - {None}
  return [GCS_HOST, *sorted(hosts - {GCS_HOST})]


def _any_reachable(hosts: list[str]) -> bool:
  """Whether one of ``hosts`` accepts a connection on port 443 within the timeout, name lookup
  included. All are tried at once, in daemon threads: a lookup that hangs is abandoned and
  does not hold up the exit."""
  answered = []

  def connect(host):
    try:
      socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
      answered.append(host)
    except OSError:
      pass

  threads = [threading.Thread(target=connect, args=(h,), daemon=True) for h in hosts]
  for t in threads:
    t.start()
  deadline = time.monotonic() + PROBE_TIMEOUT_S
  for t in threads:
    t.join(max(0.0, deadline - time.monotonic()))
  return bool(answered)


def _paths(root: str) -> set[str]:
  out = set()
  for d, dirs, files in os.walk(root):
    out.update(os.path.join(d, n) for n in dirs + files)
  return out


def _remove_new(root: str, before: set[str]) -> None:
  """Removes every path under ``root`` created since ``before`` (the topmost new ones)."""
  for path in sorted(_paths(root) - before):
    parent = os.path.dirname(path)
    if parent != root and parent not in before:
      continue  # inside a new folder, removed with it
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
