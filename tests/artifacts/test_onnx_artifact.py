"""ONNX artifact: integer sites as MatMulInteger / ConvInteger, agreeing with JAX serving at any
batch size."""

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from compressjax.artifacts import save_onnx, to_onnx, write_artifacts  # noqa: E402


def _run(path, x):
  session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  return session.run(None, {"input": np.asarray(x)})[0]


def _ops(model_proto):
  return {node.op_type for node in model_proto.graph.node}


def _check(served, tmp_path, name, int_ops):
  path = tmp_path / f"{name}.onnx"
  size = save_onnx(served["serving_model"], served["serving_vars"], served["x"], str(path))
  float_size = save_onnx(served["model"], served["float_vars"], served["x"],
                         str(tmp_path / f"{name}_float.onnx"))
  ops = _ops(onnx.load(str(path)))
  assert int_ops <= ops and "MatMul" not in ops, ops
  expected = served["expected"]
  got = _run(path, served["x"])
  agree = np.mean(np.argmax(got, -1) == np.argmax(expected, -1))
  diff = float(np.max(np.abs(got - expected)))
  print(f"{name}: onnx {size} B (float export {float_size} B), argmax agreement {agree:.3f}, "
        f"max logit diff {diff:.2e}")
  assert agree >= 0.997 and diff <= 1e-3 * (1 + np.max(np.abs(expected)))
  graph = onnx.load(str(path)).graph
  assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
  for rows in (1, 5):  # the batch dimension is dynamic
    np.testing.assert_allclose(_run(path, served["x"][:rows]), expected[:rows],
                               atol=1e-3 * (1 + np.max(np.abs(expected))))
  return size, float_size


def test_w8a8_cnn_runs_on_integer_ops_in_onnxruntime(w8a8_cnn, tmp_path):
  size, float_size = _check(w8a8_cnn, tmp_path, "cnn_w8a8", {"ConvInteger", "MatMulInteger"})
  assert size < float_size
  weights = {i.name: i for i in onnx.load(str(tmp_path / "cnn_w8a8.onnx")).graph.initializer}
  assert weights["served/hidden/kernel/weight/packed"].data_type == onnx.TensorProto.INT8


def test_w4a4_mlp_runs_on_integer_ops_in_onnxruntime(w4a4_mlp, tmp_path):
  size, float_size = _check(w4a4_mlp, tmp_path, "mlp_w4a4", {"MatMulInteger"})
  assert size < 0.5 * float_size


def test_w4a16_kernel_path_runs_in_onnxruntime(w4a16_mlp, tmp_path):
  from compressjax.export import serving_paths  # pylint: disable=g-import-not-at-top

  served = w4a16_mlp
  paths = serving_paths(served["serving_model"], served["serving_vars"], served["x"][:1])
  assert {path for path, _ in paths.values()} == {"kernel"}, paths
  path = tmp_path / "mlp_w4a16.onnx"
  save_onnx(served["serving_model"], served["serving_vars"], served["x"], str(path))
  for rows in (1, 5, len(served["x"])):
    np.testing.assert_allclose(_run(path, served["x"][:rows]), served["expected"][:rows],
                               atol=1e-4)


def test_custom_einsum_layer_runs_in_onnxruntime(w8a8_einsum, tmp_path):
  _check(w8a8_einsum, tmp_path, "einsum_w8a8", {"MatMulInteger"})


def test_write_artifacts_reports_sizes_and_agreement(w8a8_cnn, tmp_path):
  sparse = {"hidden/kernel": "bitmap"}
  report = write_artifacts(w8a8_cnn["serving_model"], w8a8_cnn["serving_vars"], w8a8_cnn["x"],
                           str(tmp_path), sparse=sparse)
  print(report)
  assert (tmp_path / "model.onnx").stat().st_size == report["onnx_bytes"]
  assert (tmp_path / "stablehlo" / "weights.safetensors").stat().st_size == report[
      "stablehlo_weights_bytes"]
  assert (tmp_path / "stablehlo" / "expand.stablehlo").stat().st_size == report[
      "stablehlo_expand_bytes"] and report["sparse"] == sparse
  manifest = json.loads((tmp_path / "stablehlo" / "manifest.json").read_text())
  assert report["sparse_weights_bytes"] == sum(leaf["bytes"] for leaf in manifest["leaves"])
  for name in ("onnx", "stablehlo"):
    assert report[f"{name}_argmax_agreement"] >= 0.997 and report[f"{name}_max_abs_diff"] < 1e-3


class _Cumsum(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.cumsum(x, axis=-1)


def test_unsupported_primitive_is_named():
  x = jnp.ones((2, 3))
  with pytest.raises(NotImplementedError, match="primitive 'cumsum' has no ONNX lowering"):
    to_onnx(_Cumsum(), {}, x)
