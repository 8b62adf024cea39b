"""runs.qat: PTQ and QAT of a float run through the config's quant section, served accuracy."""

import pytest

from compressjax.config import get_config
from compressjax.runs import quantize_classifier, setup
from compressjax.train import Checkpoints


@pytest.fixture(scope="module")
def common(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return [f"data.data_dir={data_dir}", "model.kwargs.widths=(4, 8)", "model.kwargs.hidden=16",
          "train.steps=2", "train.batch_size=32", "train.eval_every_epochs=none",
          "train.progress=false"]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory, common):
  workdir = tmp_path_factory.mktemp("float")
  checkpoints = Checkpoints(str(workdir))
  checkpoints.save(setup(get_config("digits_cnn", common)).state, {})  # its initial state
  checkpoints.wait()
  checkpoints.close()
  return str(workdir)


@pytest.mark.parametrize("train", [False, True])
def test_ptq_and_qat_report_the_served_model(common, float_dir, tmp_path, train):
  cfg = get_config("digits_cnn", common + ["quant.method=lsq", "quant.w_bits=4",
                                           "quant.a_bits=4", f"quant.init_from={float_dir}"])
  out = quantize_classifier(cfg, str(tmp_path / "run"), train=train, calibration_batches=1)
  assert out["mode"] == ("qat" if train else "ptq") and out["method"] == "lsq"
  assert out["quantized_bytes"] < out["float_bytes"] / 2
  assert 0.0 <= out["init_top1_agreement"] <= 1.0
  assert out["served_accuracy"] == pytest.approx(out["fake_quant_accuracy"], abs=0.02)
  assert (tmp_path / "run" / "checkpoints").exists() == train


def test_a_float_run_is_required(common):
  with pytest.raises(ValueError, match=r"quant.method='lsq', quant.init_from=None; set both"):
    quantize_classifier(get_config("digits_cnn", common + ["quant.method=lsq"]), "unused")
