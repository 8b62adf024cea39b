"""The LM experiments' --quick paths (PTQ with RTN and GPTQ, QAT, pruning and KD, KV-cache
decode benchmark).

One module fixture trains the quick teacher if it is not cached (``experiments/work/lm``) and
runs each quick path once into a temporary directory (about 1.5-2 CPU-minutes in all); the tests
check what they wrote: files exist, served bits per byte are finite and positive, the served
models equal their fake-quant ones, and KV-cache decoding equals the full forward.
"""

import json
import math
import os
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.matching import UnusedRuleWarning
from compressjax.quant import gptq_apply
from compressjax.quant.granularity import PER_CHANNEL, per_group
from compressjax.quant.uniform import Uniform
from experiments import lm_common, lm_prune, lm_ptq, lm_qat, lm_teacher


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
  if lm_common.load_teacher("teacher_quick") is None:
    lm_teacher.main(["--quick"])
  out = str(tmp_path_factory.mktemp("lm_results"))
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  return {
      "out": out,
      "ptq": lm_ptq.main(["--quick", "--out-dir", out]),
      "qat": lm_qat.main(["--quick", "--out-dir", out]),
      "prune": lm_prune.main(["--quick", "--out-dir", out]),
      "decode": decode.main(["--quick", "--out", os.path.join(out, "decode_quick.json")]),
  }


def test_ptq_quick_outputs_and_served_equals_fake(quick_runs):
  out, result = quick_runs["out"], quick_runs["ptq"]
  for ext in ("json", "md", "png"):
    assert os.path.getsize(os.path.join(out, f"lm_ptq_quick.{ext}")) > 0
  with open(os.path.join(out, "lm_ptq_quick.json")) as f:
    assert json.load(f)["rows"]
  methods = {r["method"] for r in result["rows"]}
  assert methods == {"float", "rtn", "gptq"}
  for r in result["rows"]:
    assert math.isfinite(r["test_bpb"]) and r["test_bpb"] > 0, r
    if r["method"] != "float":
      assert r["served_minus_fake_max_abs_logit"] < 1e-4, r
  gptq = [r for r in result["rows"] if r["method"] == "gptq"]
  assert {r["act_order"] for r in gptq} == {False, True} and len({r["seed"] for r in gptq}) == 2
  assert "| GPTQ channel |" in open(os.path.join(out, "lm_ptq_quick.md")).read()


def test_qat_quick_outputs(quick_runs):
  out, result = quick_runs["out"], quick_runs["qat"]
  for ext in ("json", "md", "png"):
    assert os.path.getsize(os.path.join(out, f"lm_qat_quick.{ext}")) > 0
  (row,) = result["rows"]
  assert row["finite"] and math.isfinite(row["test_bpb"]) and row["test_bpb"] > 0
  # int8 dot path: accumulation order differs from the float matmul's, which can move an
  # activation across a rounding boundary (single logits move, the loss does not).
  assert abs(row["served_minus_fake_bpb_check"]) < 1e-3, row


def test_prune_and_kd_quick(quick_runs):
  result = quick_runs["prune"]
  assert os.path.getsize(os.path.join(quick_runs["out"], "lm_prune_quick.md")) > 0
  (row,) = result["prune"]
  assert row["pattern"] == "2:4" and abs(row["sparsity_of_pruned_kernels"] - 0.5) < 1e-6
  assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("one_shot_bpb", "finetuned_bpb"))
  assert [r["loss"] for r in result["kd"]] == ["CE only", "logit KD"]
  assert all(math.isfinite(r["test_bpb"]) and r["test_bpb"] > 0 for r in result["kd"])


def test_decode_quick_matches_full_forward(quick_runs):
  result = quick_runs["decode"]
  assert os.path.exists(os.path.join(quick_runs["out"], "decode_quick.json"))
  assert result["device"] and {r["case"] for r in result["rows"]} == {
      "float", "W8A16 channel", "W4A16 g32"}
  for r in result["rows"]:
    assert r["greedy_match"] and r["max_abs_logit_diff"] < 1e-3, r
    assert r["tokens_per_s"] > 0


def test_given_codes_from_rtn_serve_like_uniform():
  """GivenCodes holding rtn_quantize's codes exports the same model as Uniform's RTN."""
  model, params, _ = lm_common.require_teacher("teacher_quick")
  x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32)), jnp.int32)
  served = []
  for weight in (Uniform(bits=3, granularity=per_group(32)),
                 gptq_apply.GivenCodes(bits=3, group_size=32)):
    rules = [Rule(pattern="^head/", weight=Uniform(bits=8, granularity=PER_CHANNEL)),
             Rule(pattern=".", weight=weight)]
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UnusedRuleWarning)
      m = cj.compress(model, rules)
      v = cj.init_from(m, {"params": params}, x, train=False)
    if isinstance(weight, gptq_apply.GivenCodes):
      names = [s.name for s in cj.discover(model, x, train=False)
               if s.has_weight and not s.name.startswith("head/")]
      v = gptq_apply.set_given_codes(
          v, gptq_apply.rtn_codes(model, {"params": params}, names, x, bits=3, group_size=32,
                                  train=False))
    sm, sv = cj.export(m, v, x, train=False)
    served.append(np.asarray(sm.apply(sv, x)))
    np.testing.assert_allclose(served[-1], np.asarray(m.apply(v, x)), atol=1e-5)
  np.testing.assert_allclose(served[0], served[1], atol=1e-5)
