"""``compressjax export``: a trained QAT run's artifacts, their sizes and agreement; bad input is
one line."""

import json

import pytest

from compressjax.cli import main

SMALL = ["model.kwargs.widths=(4, 8)", "model.kwargs.hidden=16", "train.steps=3",
         "train.progress=false"]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
  """A 3-step W8A8 LSQ run of a narrow digits CNN (QAT from scratch: only the format matters)."""
  workdir = tmp_path_factory.mktemp("qat") / "run"
  sets = [*SMALL, "quant.method=lsq", "quant.w_bits=8", "quant.a_bits=8",
          f"data.data_dir={tmp_path_factory.mktemp('tfds')}"]
  main(["train", "--config", "digits_cnn", "--workdir", str(workdir),
        *[a for s in sets for a in ("--set", s)]])
  return workdir


def _error(capsys, argv):
  with pytest.raises(SystemExit) as info:
    main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert info.value.code == 2 and len(err) == 1, err
  return err[0]


def test_export_writes_both_artifacts_with_sizes_and_agreement(qat_run, tmp_path, capsys):
  capsys.readouterr()
  out = tmp_path / "art"
  main(["export", "--workdir", str(qat_run), "--out", str(out), "--inputs", "8",
        "--sparse", "hidden/kernel=bitmap"])
  printed = capsys.readouterr().out
  print(printed)
  report = json.loads((out / "export.json").read_text())
  assert report["step"] == 3 and report["quant"]["method"] == "lsq" and report["inputs"] == 8
  for name, key in (("stablehlo/model.stablehlo", "stablehlo_module_bytes"),
                    ("stablehlo/weights.safetensors", "stablehlo_weights_bytes"),
                    ("stablehlo/expand.stablehlo", "stablehlo_expand_bytes"),
                    ("model.onnx", "onnx_bytes")):
    assert (out / name).stat().st_size == report[key]
    assert f"{name}" in printed and f"{report[key]:,} B" in printed
    assert f"{report[key] / report['float_bytes']:.2f}x the float parameters" in printed
  for name in ("stablehlo", "onnx"):
    assert report[f"{name}_argmax_agreement"] == 1.0 and report[f"{name}_max_abs_diff"] < 1e-4
  assert "served vs StableHLO on 8 test images: argmax agreement 100.00%" in printed
  assert "served vs ONNX (onnxruntime) on 8 test images" in printed
  assert report["sparse"] == {"hidden/kernel": "bitmap"}
  assert (f"weights: float parameters {report['float_bytes']:,} B -> served arrays "
          f"{report['sparse_weights_bytes']:,} B" in printed)


def test_bad_export_input_is_one_line(qat_run, tmp_path, capsys):
  export = ["export", "--workdir", str(qat_run), "--out", str(tmp_path / "a")]
  assert "is not a training run (no config.json)" in _error(
      capsys, ["export", "--workdir", str(tmp_path)])
  no_checkpoints = tmp_path / "fresh"
  no_checkpoints.mkdir()
  (no_checkpoints / "config.json").write_text((qat_run / "config.json").read_text())
  assert f"no checkpoints in {no_checkpoints}" in _error(
      capsys, ["export", "--workdir", str(no_checkpoints)])
  assert "no checkpoint 7 in" in _error(capsys, export + ["--step", "7"])
  assert ("unknown artifact format 'tflite'; allowed: stablehlo, onnx" in
          _error(capsys, export + ["--format", "stablehlo,tflite"]))
  assert "hidden/kernel: unknown format '2/4'" in _error(
      capsys, export + ["--sparse", "hidden/kernel=2/4"])
  assert "sparse storage of hidden/kernel: not 2:4 sparse" in _error(
      capsys, export + ["--format", "stablehlo", "--sparse", "hidden/kernel=2:4"])
