"""The main job at tiny settings: the report files exist and hold consistent, measured numbers."""

import json

import numpy as np
import pytest

from compressjax.core import KeepZeros, discover
from compressjax.models import CNN
from compressjax.pipeline import Story, run_story, site_bits, student_rules

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def story_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("story")
  overrides = ["train.epochs=1", "train.progress=false", f"data.data_dir={root / 'tfds'}"]
  lines = []
  summary = run_story(str(root / "demo"), overrides, story=Story(baselines=((4, 4),)),
                      log=lines.append)
  return root / "demo", summary, lines


def test_report_files_hold_the_returned_numbers(story_run):
  workdir, summary, lines = story_run
  headers = [line for line in lines if line.startswith("[")]
  assert len(headers) == 5 and headers[0].startswith("[1/5] float teacher: train")
  assert {"float", "qat_w4a4", "student", "summary.json", "summary.md", "summary.png"} <= {
      p.name for p in workdir.iterdir()}
  saved = json.loads((workdir / "summary.json").read_text())
  assert saved == json.loads(json.dumps(summary))
  assert (workdir / "summary.png").read_bytes()[:8] == PNG_MAGIC
  md = (workdir / "summary.md").read_text()
  for m in saved["models"]:
    assert f"| {m['label']} | {100 * m['accuracy']:.2f}% |" in md
    assert f"{m['bytes']:,}" in md
  assert [m["name"] for m in saved["models"]] == ["float", "qat_w4a4", "student"]
  assert set(saved["timings_s"]) == {"teacher", "qat_w4a4", "student", "serve", "report", "total"}
  assert saved["float"]["reused"] is False and saved["student"]["steps"] > 0
  assert abs(saved["models"][0]["accuracy"] - saved["float"]["test_accuracy"]) < 1e-6


def test_served_student_equals_fake_quant(story_run):
  _, s, _ = story_run
  student = s["models"][-1]
  assert student["name"] == "student"
  assert student["accuracy"] == student["fake_quant_accuracy"] > 0.3
  qat = s["models"][1]
  assert qat["name"] == "qat_w4a4" and qat["accuracy"] == qat["fake_quant_accuracy"]
  checks = s["checks"]
  assert checks["prediction_mismatches"] == {"qat_w4a4": 0, "student": 0}
  assert checks["max_logit_diff"] < 1e-4
  assert checks["pruned_zero_when_served"] is True
  for m in s["models"][1:]:  # both artifacts written, onnxruntime agrees with the served model
    a = m["artifacts"]
    assert a["onnx_argmax_agreement"] >= 0.997 and a["onnx_max_abs_diff"] < 1e-3
    assert a["onnx_bytes"] > 0 and a["stablehlo_module_bytes"] > 0
  assert set(checks["dispatch"]["backends"]) == {"hidden/kernel", "head/kernel"}  # dot sites


def test_sparsity_bits_and_costs_are_consistent(story_run):
  _, s, _ = story_run
  layers = {layer["site"]: layer for layer in s["layers"]}
  assert list(layers) == ["conv0/kernel", "conv1/kernel", "hidden/kernel", "head/kernel"]
  assert [layer["module"] for layer in layers.values()] == ["conv0", "conv1", "hidden", "head"]
  paths = {n: layer["serving_path"] for n, layer in layers.items()}
  assert set(paths.values()) <= {"int8 dot", "int8 conv", "kernel", "xla dequant", "float"}
  assert paths["conv0/kernel"] != "float" and paths["head/kernel"] != "float", paths
  pruned = [p for p, layer in layers.items() if layer["sparsity"] is not None]
  assert pruned == ["conv1/kernel", "hidden/kernel"]  # first and last layer stay dense
  for p in pruned:
    assert abs(layers[p]["sparsity"] - 0.5) < 0.01
    assert layers[p]["served_zeros"] >= layers[p]["sparsity"]
  assert abs(s["student"]["sparsity"]["pruned_layers"] - 0.5) < 0.01
  bits = {p: (layer["w_bits"], layer["a_bits"]) for p, layer in layers.items()}
  assert bits == {"conv0/kernel": (8, None), "conv1/kernel": (4, 4), "hidden/kernel": (4, 4),
                  "head/kernel": (8, 8)}
  for layer in layers.values():
    w, a = layer["w_bits"], layer["a_bits"] or 32  # a float input counts 32 bits
    assert layer["bitops"] == layer["macs"] * w * a
    assert layer["served_bytes"] < layer["float_bytes"]
  fp, qat, student = s["models"]
  assert student["bitops"] == sum(layer["bitops"] for layer in layers.values()) == qat["bitops"]
  assert fp["bitops"] == s["macs"] * 32 * 32
  assert student["sparse_bytes"] < student["bytes"] == qat["bytes"] < fp["bytes"] / 4
  assert sum(layer["served_bytes"] for layer in layers.values()) < student["bytes"]


def test_student_rules_wrap_every_weight_quantizer_in_keep_zeros():
  x = np.zeros((1, 8, 8, 1), np.float32)
  sites = discover(CNN(), x)
  rules = student_rules(Story(w_bits=3, a_bits=5), sites)
  assert all(isinstance(r.weight, KeepZeros) for r in rules)
  w, a = site_bits(rules, sites)
  assert w == {"conv0/kernel": 8, "conv1/kernel": 3, "hidden/kernel": 3, "head/kernel": 8}
  assert a == {"conv0/kernel": None, "conv1/kernel": 5, "hidden/kernel": 5, "head/kernel": 8}
  assert site_bits(rules, [site.name for site in sites]) == (w, a)


@pytest.mark.parametrize("field, value", [("sparsity", 1.0), ("prune_until", 0.0),
                                          ("prune_updates_per_epoch", 0)])
def test_bad_story_settings_fail_early(field, value):
  with pytest.raises(ValueError, match=f"Story.{field}={value!r}"):
    Story(**{field: value})
