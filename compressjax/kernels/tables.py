"""Measured backend tables: per device, how long each matmul path took at each shape.

``benchmarks/matmul_device.py`` writes one table per device; committed tables live in
``compressjax/kernels/tables/<device slug>.json`` and the dispatcher reads the one matching
``jax.devices()[0].device_kind``. JSON format (``format`` = ``FORMAT``)::

  {"format": "compressjax-matmul-table/1", "device_kind": "NVIDIA H200", "platform": "gpu",
   "jax": "0.11.0", "entries": [
     {"kind": "weight_only", "bits": 4, "group": 128, "zero_point": false,
      "m": 1, "k": 4096, "n": 4096,
      "us": {"bf16": 9.1, "xla": 24.0, "pallas": 3.2},
      "config": {"block_m": 16, "block_n": 32, "block_k": 128, "split_k": 1,
                 "num_warps": 4, "num_stages": 4}}]}

``kind`` is "weight_only" or "w8a8"; ``group`` is the kernel's effective group (null: per
channel or per tensor); ``us`` holds device microseconds per call of the backends measured
("bf16": an XLA bf16 ``jnp.dot`` on a float weight of the same shape, the bar every backend
must beat); ``config`` the fastest Pallas tiles found.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from compressjax.kernels._pallas import BlockConfig

FORMAT = "compressjax-matmul-table/1"
KINDS = ("weight_only", "w8a8")
TABLE_DIR = pathlib.Path(__file__).parent / "tables"


@dataclasses.dataclass(frozen=True)
class Entry:
  """One measured shape: backend -> microseconds per call, and the best Pallas tiles."""

  kind: str
  bits: int
  group: int | None
  zero_point: bool
  m: int
  k: int
  n: int
  us: dict[str, float]
  config: BlockConfig | None = None

  def key(self) -> tuple:
    return (self.kind, self.bits, self.group, self.zero_point, self.k, self.n)


@dataclasses.dataclass(frozen=True)
class Table:
  """All entries measured on one device."""

  device_kind: str
  platform: str
  entries: tuple[Entry, ...]
  jax_version: str | None = None

  def lookup(self, kind: str, bits: int, group: int | None, zero_point: bool, m: int, k: int,
             n: int) -> Entry | None:
    """The entry for this weight at the smallest measured M >= ``m`` (None past the largest).

    Rounding M up is the conservative side: a kernel's lead over XLA shrinks as M grows.
    """
    key = (kind, bits, group, zero_point, k, n)
    above = [e for e in self.entries if e.key() == key and e.m >= m]
    return min(above, key=lambda e: e.m) if above else None


def slug(device_kind: str) -> str:
  """File-name form of a device kind: "NVIDIA H200" -> "nvidia_h200"."""
  return re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_") or "unknown"


def table_path(device_kind: str, directory: pathlib.Path = TABLE_DIR) -> pathlib.Path:
  return pathlib.Path(directory) / f"{slug(device_kind)}.json"


def find_table(device_kind: str, directory: pathlib.Path = TABLE_DIR) -> Table | None:
  """The committed table for ``device_kind``, or None when that device was never measured."""
  path = table_path(device_kind, directory)
  return load_table(path) if path.exists() else None


def load_table(path: str | pathlib.Path) -> Table:
  """Reads and validates a table JSON; errors name the file, the entry and the field."""
  path = pathlib.Path(path)
  data = json.loads(path.read_text())
  return from_dict(data, where=str(path))


def from_dict(data: dict[str, Any], where: str = "table") -> Table:
  if data.get("format") != FORMAT:
    raise ValueError(f"{where}: format={data.get('format')!r}, expected {FORMAT!r}")
  for field in ("device_kind", "platform", "entries"):
    if field not in data:
      raise ValueError(f"{where}: missing field {field!r}")
  entries = tuple(_entry(e, f"{where} entry {i}") for i, e in enumerate(data["entries"]))
  return Table(data["device_kind"], data["platform"], entries, data.get("jax"))


def to_dict(table: Table) -> dict[str, Any]:
  """The JSON form of ``table`` (inverse of :func:`from_dict`)."""
  entries = []
  for e in table.entries:
    d = dataclasses.asdict(e)
    d["config"] = None if e.config is None else dataclasses.asdict(e.config)
    entries.append(d)
  return {"format": FORMAT, "device_kind": table.device_kind, "platform": table.platform,
          "jax": table.jax_version, "entries": entries}


def save_table(table: Table, path: str | pathlib.Path) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(to_dict(table), indent=1) + "\n")


def _entry(d: dict[str, Any], where: str) -> Entry:
  missing = [f for f in ("kind", "bits", "group", "zero_point", "m", "k", "n", "us") if f not in d]
  if missing:
    raise ValueError(f"{where}: missing fields {missing}")
  if d["kind"] not in KINDS:
    raise ValueError(f"{where}: kind={d['kind']!r} is not one of {KINDS}")
  us = {str(b): float(t) for b, t in d["us"].items()}
  bad = {b: t for b, t in us.items() if not t > 0}
  if bad:
    raise ValueError(f"{where}: times must be positive microseconds, got {bad}")
  config = d.get("config")
  return Entry(d["kind"], int(d["bits"]), None if d["group"] is None else int(d["group"]),
               bool(d["zero_point"]), int(d["m"]), int(d["k"]), int(d["n"]), us,
               None if config is None else BlockConfig(**config))
