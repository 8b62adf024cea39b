"""Bit allocations: JSON round trip, rules, table, plot, cost, bad input."""

import json

import jax
import numpy as np
import pytest

from compressjax import cost
from compressjax.mixed import report as mr
from compressjax.mixed.budget import Budget
from compressjax.mixed.interp import ChannelBits
from compressjax.models import CNN
from compressjax.quant import SAT

W = {"conv0/kernel": 8, "conv1/kernel": [2, 3, 3, 4], "hidden/kernel": 3, "head/kernel": 8}
A = {"conv0/kernel": None, "conv1/kernel": 4, "hidden/kernel": 3, "head/kernel": 8}


@pytest.fixture(scope="module")
def profile():
  return cost.profile(CNN(widths=(2, 4), hidden=6, num_classes=3), jax.ShapeDtypeStruct((1, 8, 8, 1), np.float32))


def test_json_round_trip_and_rules(tmp_path):
  alloc = mr.BitAllocation.create({**W, "hidden/kernel": np.int64(3)}, A, method="fracbits", meta={"k": 1})
  path = str(tmp_path / "a" / "alloc.json")
  alloc.save(path)
  raw = json.load(open(path))
  assert raw["format"] == mr.FORMAT and raw["layers"][1] == {
      "path": "conv1/kernel", "pattern": "^conv1/kernel$", "w_bits": [2, 3, 3, 4], "a_bits": 4}
  assert mr.BitAllocation.load(path) == alloc
  rules = mr.rules_from_json(path, method="sat")
  assert [r.pattern for r in rules] == ["^conv0/kernel$", "^conv1/kernel$", "^hidden/kernel$",
                                        "^head/kernel$"]
  assert rules[0].weight == SAT(bits=8, zero_point="mean") and rules[0].act is None
  assert isinstance(rules[1].weight, ChannelBits) and rules[1].weight.bits == (2, 3, 3, 4)
  assert rules[1].act == SAT(bits=4, kind="activation", signed=None)  # sign from calibration
  centered = mr.rules_from_json(alloc)[2].weight  # default method: SAT on the centered grid
  assert centered == SAT(bits=3, grid="centered")
  uniform = mr.rules_from_json(mr.BitAllocation.create({"c": [3, 3]}, {"c": 3}), method="sat")
  assert uniform[0].weight == SAT(bits=3, zero_point="mean")  # equal channel bits: the plain one


def test_cost_table_and_report_agree_with_the_cost_model(profile):
  alloc = mr.BitAllocation.create(W, A, method="fracbits")
  budget = Budget(target=1e5)
  s = {x.path: x for x in profile.sites}
  expected = (s["conv0/kernel"].macs * 8 * 8 + s["conv1/kernel"].macs * 3 * 4
              + s["hidden/kernel"].macs * 3 * 3 + s["head/kernel"].macs * 8 * 8)
  assert alloc.cost(profile, budget) == pytest.approx(expected)
  text = mr.table({"fracbits": alloc, "uniform": alloc}, profile, budget)
  assert "3.00[2-4]/4" in text and "8/fp" in text and f"{expected:,.0f}" in text
  rep = mr.report({"fracbits": alloc}, profile, budget)
  assert rep["allocations"]["fracbits"]["cost"] == pytest.approx(expected)
  assert rep["allocations"]["fracbits"]["relative_error"] == pytest.approx(expected / 1e5 - 1)
  json.dumps(rep)  # JSON-ready


def test_plot_writes_a_png(profile, tmp_path):
  alloc = mr.BitAllocation.create(W, A)
  path = tmp_path / "bits.png"
  mr.plot({"a": alloc, "b": alloc}, profile, str(path), title="bits")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_uniform_allocation_pins_the_edges():
  u = mr.BitAllocation.uniform(["conv0/kernel", "conv1/kernel", "hidden/kernel", "head/kernel"], 3)
  assert u.w_bits == {"conv0/kernel": 8, "conv1/kernel": 3, "hidden/kernel": 3, "head/kernel": 8}
  assert u.a_bits == {"conv0/kernel": None, "conv1/kernel": 3, "hidden/kernel": 3,
                      "head/kernel": 8}


def test_bad_allocations_are_refused():
  with pytest.raises(ValueError, match="name different sites"):
    mr.BitAllocation.create({"a": 3}, {"b": 3})
  with pytest.raises(ValueError, match="must be integers; got 3.5"):
    mr.BitAllocation.create({"a": 3.5}, {"a": 3})
  with pytest.raises(ValueError, match="one integer per site"):
    mr.BitAllocation.create({"a": 3}, {"a": [3, 4]})
  with pytest.raises(ValueError, match="not a bit allocation"):
    mr.BitAllocation.from_dict({"layers": []})
