"""Per-layer bit allocations: the JSON format, its rules, a text table and a plot.

A :class:`BitAllocation` (written by FracBits' :func:`~compressjax.mixed.fracbits.harden` and
:func:`~compressjax.mixed.hawq.hawq_allocation`) maps each site name (``"conv1/kernel"``) to its weight and input
bits (``None``: float; a list: one weight bit-width per output channel). Saved as JSON::

    {"format": "compressjax.bit_allocation/1", "method": "fracbits",
     "layers": [{"path": "conv1/kernel", "pattern": "^conv1/kernel$", "w_bits": 3,
                 "a_bits": 4}, ...],
     "meta": {...}}

:func:`rules_from_json` turns it into the :class:`~compressjax.core.Rule` list that
``compress`` takes, with a quantizer recipe at the given bits: the allocation is reused for
fixed-bit fine-tuning and export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compressjax.core.rule import Rule
from compressjax.cost import Profile
from compressjax.mixed.budget import Budget
from compressjax.mixed.common import DEFAULT_METHOD, Method, quantizers
from compressjax.mixed.interp import ChannelBits

FORMAT = "compressjax.bit_allocation/1"

WBits = int | list[int] | None


def _plain(b: Any) -> WBits:
  """Bits as JSON-ready Python values (int, list of ints, or None)."""
  if b is None:
    return None
  arr = np.asarray(b)
  if arr.ndim:
    return [int(v) for v in arr.ravel()]
  if float(arr) != int(arr):
    raise ValueError(f"bit-widths of an allocation must be integers; got {b!r}")
  return int(arr)


@dataclasses.dataclass(frozen=True)
class BitAllocation:
  """Integer bits per site path (insertion order = call order).

  Attributes:
    w_bits: path -> weight bits (int, list per output channel, or None = float).
    a_bits: path -> input bits (int or None = float).
    method: who made it ("fracbits", "hawq", "uniform", ...).
    meta: free-form JSON-ready details (cost, target, offset, ...).
  """

  w_bits: dict[str, WBits]
  a_bits: dict[str, int | None]
  method: str = ""
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, w_bits: Mapping[str, Any], a_bits: Mapping[str, Any], method: str = "",
             meta: Mapping[str, Any] | None = None) -> BitAllocation:
    """An allocation from bits of any numeric type (numpy, jnp, lists)."""
    if set(w_bits) != set(a_bits):
      raise ValueError(f"w_bits and a_bits name different sites: {sorted(set(w_bits) ^ set(a_bits))}")
    w = {p: _plain(b) for p, b in w_bits.items()}
    a = {p: _plain(a_bits[p]) for p in w_bits}
    bad = {p: b for p, b in a.items() if isinstance(b, list)}
    if bad:
      raise ValueError(f"input bits must be one integer per site; got lists at {sorted(bad)}")
    return cls(w, a, method, dict(meta or {}))

  @classmethod
  def uniform(cls, paths: Sequence[str], bits: int, edge_bits: int = 8) -> BitAllocation:
    """``bits`` everywhere in the layout FracBits and HAWQ search in: the first site keeps
    ``edge_bits`` weights and a float input, the last ``edge_bits`` weights and inputs."""
    paths = list(paths)
    if not paths:
      raise ValueError("BitAllocation.uniform: no site paths given")
    w = {p: bits for p in paths}
    a = dict(w)
    w[paths[0]], a[paths[0]] = edge_bits, None
    w[paths[-1]], a[paths[-1]] = edge_bits, edge_bits
    return cls.create(w, a, method=f"uniform{bits}")

  @property
  def paths(self) -> tuple[str, ...]:
    return tuple(self.w_bits)

  def cost(self, profile: Profile, budget: Budget) -> float:
    """The budget's cost (BitOPs or bytes) of this allocation."""
    w = {p: None if b is None else np.asarray(b, np.float32) if isinstance(b, list) else b
         for p, b in self.w_bits.items()}
    return float(budget.cost(profile, w, self.a_bits))

  def to_dict(self) -> dict[str, Any]:
    layers = [{"path": p, "pattern": f"^{re.escape(p)}$", "w_bits": self.w_bits[p],
               "a_bits": self.a_bits[p]} for p in self.paths]
    return {"format": FORMAT, "method": self.method, "layers": layers, "meta": self.meta}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> BitAllocation:
    if d.get("format") != FORMAT:
      raise ValueError(f"not a bit allocation: format={d.get('format')!r}, expected {FORMAT!r}")
    layers = d["layers"]
    return cls.create({l["path"]: l["w_bits"] for l in layers},
                      {l["path"]: l["a_bits"] for l in layers}, d.get("method", ""), d.get("meta"))

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2)

  @classmethod
  def load(cls, path: str) -> BitAllocation:
    with open(path) as f:
      return cls.from_dict(json.load(f))


def rules_from_json(src: str | Mapping[str, Any] | BitAllocation, *, method: Method = DEFAULT_METHOD) -> list[Rule]:
  """Fixed-bit rules of an allocation (a JSON file, its dict, or a BitAllocation).

  Every layer becomes ``Rule(pattern="^<path>$", weight=..., act=...)`` with ``method``'s
  quantizers at its bits (a recipe name, ``"sat_centered"`` or a callable, as in ``adabits``); per-channel weight bits become a
  :class:`~compressjax.mixed.interp.ChannelBits` over the recipe's weight quantizer
  (the plain quantizer when all channels agree).
  """
  if isinstance(src, str):
    alloc = BitAllocation.load(src)
  elif isinstance(src, BitAllocation):
    alloc = src
  else:
    alloc = BitAllocation.from_dict(src)
  rules = []
  for p in alloc.paths:
    w, a = alloc.w_bits[p], alloc.a_bits[p]
    weight = None
    if isinstance(w, list) and len(set(w)) > 1:
      weight = ChannelBits(base=quantizers(method, max(w), max(w))[0], bits=tuple(w))
    elif isinstance(w, list):
      weight = quantizers(method, w[0], w[0])[0]
    elif w is not None:
      weight = quantizers(method, w, w)[0]
    act = None if a is None else quantizers(method, a, a)[1]
    rules.append(Rule(pattern=f"^{re.escape(p)}$", weight=weight, act=act))
  return rules


def _show(b: WBits) -> str:
  if b is None:
    return "fp"
  if isinstance(b, list):
    return f"{np.mean(b):.2f}[{min(b)}-{max(b)}]"
  return str(b)


def report(allocs: Mapping[str, BitAllocation], profile: Profile, budget: Budget) -> dict[str, Any]:
  """JSON-ready report: per-site MACs/params and each allocation's bits, cost and error."""
  sites = [{"path": s.path, "kind": s.kind, "macs": s.macs, "params": s.params}
           for s in profile.sites]
  methods = {}
  for name, alloc in allocs.items():
    cost = alloc.cost(profile, budget)
    methods[name] = {**alloc.to_dict(), "cost": cost,
                     "relative_error": budget.relative_error(cost)}
  return {"budget": dataclasses.asdict(budget), "sites": sites, "allocations": methods}


def table(allocs: Mapping[str, BitAllocation], profile: Profile, budget: Budget) -> str:
  """Aligned text table: one row per site (bits ``w/a`` per allocation), then the costs.

  Per-channel weight bits show as ``mean[min-max]``.
  """
  names = list(allocs)
  rows = [("site", "MACs", "params", *names)]
  for s in profile.sites:
    cells = [f"{_show(allocs[n].w_bits.get(s.path))}/{_show(allocs[n].a_bits.get(s.path))}"
             for n in names]
    rows.append((s.path, f"{s.macs:,.0f}", f"{s.params:,}", *cells))
  costs = [allocs[n].cost(profile, budget) for n in names]
  rows.append((f"{budget.kind}", "", "", *(f"{c:,.0f}" for c in costs)))
  rows.append((f"vs target {budget.target:,.0f}", "", "",
               *(f"{100 * budget.relative_error(c):+.2f}%" for c in costs)))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  lines.insert(len(lines) - 2, "-" * len(lines[0]))
  return "\n".join(lines)


def plot(allocs: Mapping[str, BitAllocation], profile: Profile, path: str, title: str = "") -> None:
  """Grouped bars of weight and input bits per site for each allocation, saved as PNG.

  Per-channel weight bits are drawn at their mean with a min-max error bar.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  sites = list(profile.paths)
  names = list(allocs)
  fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(sites) * max(len(names), 1) / 2, 3.6),
                           sharey=True)
  width = 0.8 / max(len(names), 1)
  for ax, operand in zip(axes, ("w_bits", "a_bits")):
    for i, name in enumerate(names):
      bits = [getattr(allocs[name], operand).get(s) for s in sites]
      mean = [np.nan if b is None else np.mean(b) for b in bits]
      err = np.array([[m - min(b), max(b) - m] if isinstance(b, list) else [0, 0]
                      for b, m in zip(bits, mean)]).T
      xs = np.arange(len(sites)) + (i - (len(names) - 1) / 2) * width
      ax.bar(xs, mean, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(sites)), sites, rotation=30, ha="right")
    ax.set_title("weight bits" if operand == "w_bits" else "input bits (fp: no bar)")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("bits")
  axes[1].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
