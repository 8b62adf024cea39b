"""The LM experiments' --quick paths (PTQ with RTN and GPTQ, QAT, mixed precision, pruning and
KD, KV-cache decode benchmark).

One module fixture runs the quick teacher (trained in seconds unless cached with the same
configuration in ``experiments/work/lm``) and each quick path once into a temporary directory
(one narrow block, a few steps and 16 test windows each). Most of their time is XLA compiling
(the exports and GPTQ run eagerly, hundreds of small programs), so the fixture keeps a
persistent compilation cache in ``experiments/work/jax_cache``: a warm run takes about a third
of the CPU time of a cold one. The tests check what they wrote: files and keys exist, served
bits per byte are finite and positive, the served models equal their fake-quant ones, and
KV-cache decoding equals the full forward.
"""

import json
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compressjax as cj
from compressjax.core import Rule
from compressjax.core.matching import UnusedRuleWarning
from compressjax.quant import gptq_apply
from compressjax.quant.granularity import PER_CHANNEL, per_group
from compressjax.quant.uniform import Uniform
from experiments import lm_common, lm_mixed, lm_prune, lm_ptq, lm_qat, lm_teacher

CACHE_OPTIONS = {"jax_compilation_cache_dir": os.path.join(os.path.dirname(lm_common.WORK_DIR),
                                                           "jax_cache"),
                 "jax_persistent_cache_min_compile_time_secs": 0.0,
                 "jax_persistent_cache_min_entry_size_bytes": 0}


@pytest.fixture(scope="module", autouse=True)
def persistent_compilation_cache():
  """Every XLA compile of this module is read from / written to ``CACHE_OPTIONS``' directory;
  the previous options (and the process's cache state) come back afterwards."""
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  previous = {k: getattr(jax.config, k) for k in CACHE_OPTIONS}
  for k, v in CACHE_OPTIONS.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()  # re-read the options at the next compile
  yield
  for k, v in previous.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lm_results"))
  from benchmarks import decode  # pylint: disable=g-import-not-at-top
  return {
      "out": out,
      "teacher": lm_teacher.main(["--quick", "--out-dir", out]),
      "ptq": lm_ptq.main(["--quick", "--out-dir", out]),
      "qat": lm_qat.main(["--quick", "--out-dir", out]),
      "mixed": lm_mixed.main(["--quick", "--out-dir", out]),
      "prune": lm_prune.main(["--quick", "--out-dir", out]),
      "decode": decode.main(["--quick", "--out", os.path.join(out, "decode_quick.json")]),
  }


def test_teacher_quick_outputs(quick_runs):
  out, result = quick_runs["out"], quick_runs["teacher"]
  for ext in ("json", "md"):
    assert os.path.getsize(os.path.join(out, f"lm_teacher_quick.{ext}")) > 0
  assert lm_common.load_teacher("teacher_quick")[2]["config"] == result["config"]
  assert result["eval_windows"] == {"validation": lm_teacher.QUICK_EVAL_WINDOWS,
                                    "test": lm_teacher.QUICK_EVAL_WINDOWS}
  for key in ("test_bpb", "valid_bpb", "unigram_test_bpb"):
    assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
  assert result["corpus"]["corpus_sha256"] and result["history"]


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


def test_mixed_quick_outputs(quick_runs):
  out, result = quick_runs["out"], quick_runs["mixed"]
  for ext in ("json", "md", "png"):
    assert os.path.getsize(os.path.join(out, f"lm_mixed_quick.{ext}")) > 0
  cfg, rows = lm_mixed.QUICK, result["rows"]
  assert sorted((r["method"], r["w_bits"]) for r in rows) == sorted(
      [("joint", b) for b in cfg.adabits_bits] + [("separate", b) for b in cfg.separate_bits]
      + [("FracBits", cfg.target_bits), ("uniform", cfg.target_bits)])
  for r in rows:
    assert r["finite"] and math.isfinite(r["test_bpb"]) and r["test_bpb"] > 0, r
    assert abs(r["served_minus_fake_bpb_check"]) < 1e-3, r  # int8 dot path, as in QAT
  joint = [r for r in rows if r["method"] == "joint"]
  assert len({r["test_bpb"] for r in joint}) == len(joint)  # the switches differ
  (frac,) = [r for r in rows if r["method"] == "FracBits"]
  assert abs(frac["relative_error"]) <= 0.01 and frac["search_steps"] >= 1
  bits = [l["w_bits"] for l in frac["allocation"]["layers"] if not l["path"].startswith("head/")]
  assert bits and all(cfg.min_bits <= b <= cfg.max_bits for b in bits)
  assert "## FracBits vs uniform" in open(os.path.join(out, "lm_mixed_quick.md")).read()


def test_mixed_merge_replaces_the_rows_of_the_merged_part(quick_runs, tmp_path):
  out = quick_runs["out"]
  base = json.load(open(os.path.join(out, "lm_mixed_quick.json")))
  rerun = {**base, "rows": [{**r, "test_bpb": 1.0 + i} for i, r in enumerate(base["rows"])
                            if r["part"] == "adabits"], "total_seconds": 7.0}
  merged_dir = tmp_path / "merged"
  merged_dir.mkdir()
  with open(merged_dir / "lm_mixed_quick.json", "w") as f:
    json.dump(base, f)
  with open(tmp_path / "rerun.json", "w") as f:
    json.dump(rerun, f)
  result = lm_mixed.main(["--quick", "--out-dir", str(merged_dir), "--merge",
                          str(tmp_path / "rerun.json")])
  assert [r for r in result["rows"] if r["part"] == "adabits"] == rerun["rows"]
  assert ([r for r in result["rows"] if r["part"] == "fracbits"]
          == [r for r in base["rows"] if r["part"] == "fracbits"])
  (process,) = [q for q in result["processes"] if q["part"] == "adabits"]
  assert process["rows"] == len(rerun["rows"]) and process["total_seconds"] == 7
  with open(merged_dir / "lm_mixed_quick.json") as f:
    assert json.load(f)["rows"] == result["rows"]
  assert "(`--merge`)" in open(merged_dir / "lm_mixed_quick.md").read()


def test_prune_and_kd_quick(quick_runs):
  result = quick_runs["prune"]
  md = open(os.path.join(quick_runs["out"], "lm_prune_quick.md")).read()
  rows = {(r["part"], r.get("pattern", r.get("loss"))): r for r in result["rows"]}
  assert sorted(rows) == [("kd", "CE only"), ("kd", "logit KD"), ("prune", "2:4"),
                          ("prune", "75% gradual")]
  nm, gradual = rows["prune", "2:4"], rows["prune", "75% gradual"]
  assert abs(nm["sparsity_of_pruned_kernels"] - 0.5) < 1e-6 and nm["one_shot_bpb"] > 0
  # the cubic schedule reaches its final sparsity within the steps; gradual has no one-shot row
  assert abs(gradual["sparsity_of_pruned_kernels"] - 0.75) < 0.01
  assert gradual["one_shot_bpb"] is None
  assert all(math.isfinite(r["finetuned_bpb"]) and r["finetuned_bpb"] > 0
             for r in (nm, gradual))
  assert all(math.isfinite(rows["kd", k]["test_bpb"]) and rows["kd", k]["test_bpb"] > 0
             for k in ("CE only", "logit KD"))
  assert "| 75% gradual | 0.750 | - |" in md and "## Distillation" in md


def test_prune_resume_reuses_the_rows_that_finished(quick_runs, monkeypatch):
  def no_rerun(*args):
    raise AssertionError(f"a finished run was rerun: {args[1:3]}")
  monkeypatch.setattr(lm_prune, "prune_run", no_rerun)
  monkeypatch.setattr(lm_prune, "kd_run", no_rerun)
  again = lm_prune.main(["--quick", "--resume", "--out-dir", quick_runs["out"]])
  assert again["rows"] == quick_runs["prune"]["rows"]


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
