"""StableHLO artifact: weights are inputs, any batch size, and it serves without compressjax."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from compressjax.artifacts import save_stablehlo, sparse, stablehlo
from compressjax.prune.nm_pattern import nm_mask
from compressjax.qarray import QArray
from compressjax.export import size_report

# Loads the artifacts with stablehlo.py's own loader, imported by file path: jax + numpy only.
_LOADER = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("loader", sys.argv[1])
loader = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loader)
for d in sys.argv[2:]:
  run, x, expected = loader.load_stablehlo(d), np.load(d + "/x.npy"), np.load(d + "/expected.npy")
  for rows in (1, 5, len(x)):  # one artifact, any batch size
    print(d, rows, float(np.max(np.abs(np.asarray(run(x[:rows])) - expected[:rows]))))
assert "compressjax" not in sys.modules, sorted(m for m in sys.modules if "compressjax" in m)
"""


def _save(served, path):
  manifest = save_stablehlo(served["serving_model"], served["serving_vars"], served["x"], path)
  np.save(os.path.join(path, "x.npy"), np.asarray(served["x"]))
  np.save(os.path.join(path, "expected.npy"), served["expected"])
  return manifest


def test_stablehlo_serves_without_compressjax(w8a8_cnn, w8a8_einsum, w4a16_mlp, tmp_path):
  dirs = []
  for name, served in (("cnn", w8a8_cnn), ("einsum", w8a8_einsum), ("mlp_w4a16", w4a16_mlp)):
    path = str(tmp_path / name)
    manifest = _save(served, path)
    dirs.append(path)
    leaves = manifest["leaves"]
    assert any(leaf["dtype"] == "uint8" and leaf["name"].endswith("weight/packed")
               for leaf in leaves)
    with open(os.path.join(path, stablehlo.MODULE), "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    assert len(exported.in_avals) == len(leaves) + 1  # the weights are inputs
    with open(os.path.join(path, stablehlo.MANIFEST)) as f:
      assert json.load(f)["input"] == {"shape": [None, 8, 8, 1], "dtype": "float32"}
    float_bytes = size_report(served["float_vars"], ("params", "batch_stats")).total_bytes
    print(f"{name}: module {manifest['module_bytes']} B, weights.safetensors "
          f"{manifest['weights_bytes']} B (leaves {sum(leaf['bytes'] for leaf in leaves)} B), "
          f"float params {float_bytes} B")
  out = subprocess.run([sys.executable, "-c", _LOADER, stablehlo.__file__, *dirs],
                       capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  assert out.returncode == 0, out.stderr[-3000:]
  diffs = [float(line.split()[-1]) for line in out.stdout.splitlines()]
  assert len(diffs) == 9 and max(diffs) <= 1e-5, out.stdout


def test_load_refuses_another_input_shape(w8a8_einsum, tmp_path):
  path = str(tmp_path / "a")
  save_stablehlo(w8a8_einsum["serving_model"], w8a8_einsum["serving_vars"], w8a8_einsum["x"],
                 path)
  run = stablehlo.load_stablehlo(path)
  assert run(np.zeros((3, 8, 8, 1), np.float32)).shape == (3, 10)
  with pytest.raises(ValueError, match=r"shape \(3, 8, 8, 2\) .* exported for shape "
                                       r"\('batch', 8, 8, 1\)"):
    run(np.zeros((3, 8, 8, 2), np.float32))


def test_nnx_serving_module_round_trips(tmp_path):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import compressjax as cj  # pylint: disable=g-import-not-at-top
  from compressjax.quant.lsq import LSQ  # pylint: disable=g-import-not-at-top

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.a, self.b = nnx.Linear(16, 8, rngs=rngs), nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
      return self.b(jax.nn.relu(self.a(x)))

  x = jax.random.normal(jax.random.key(0), (5, 16))
  rules = [cj.Rule(pattern=".", weight=LSQ(bits=8), act=LSQ(bits=8, kind="activation"))]
  compressed = cj.compress(Net(nnx.Rngs(0)), rules, x)
  compressed.eval()
  served = cj.export(compressed)
  save_stablehlo(served, None, x, str(tmp_path))
  np.testing.assert_allclose(stablehlo.load_stablehlo(str(tmp_path))(x), served(x), atol=1e-5)


def _prune(served, formats):
  """``served`` with the codes of each site's served weight pruned: half by magnitude ("bitmap")
  or N:M; returns its serving variables and their outputs."""
  tree = {**served["serving_vars"], "served": dict(served["serving_vars"]["served"])}
  for site, spec in formats.items():
    layer, param = site.split("/")
    q = tree["served"][layer][param]["weight"]
    codes = np.asarray(q.codes())
    if spec == "bitmap":
      codes = np.where(np.abs(codes) >= np.median(np.abs(codes)), codes, 0)
    else:
      n, m = map(int, spec.split(":"))
      codes = np.where(nm_mask(np.abs(codes), n, m), codes, 0)
    pruned = QArray.from_codes(codes.reshape(q.shape), q.scale, q.zero_point, bits=q.bits,
                               signed=q.signed, group_size=q.group_size)
    tree["served"][layer] = {param: {**tree["served"][layer][param], "weight": pruned}}
  return tree, np.asarray(jax.jit(served["serving_model"].apply)(tree, served["x"]))


def test_sparse_weights_shrink_the_artifact_and_serve_the_same(w8a8_cnn, tmp_path):
  formats = {"conv1/kernel": "2:4", "hidden/kernel": "bitmap"}
  tree, expected = _prune(w8a8_cnn, formats)
  model, x = w8a8_cnn["serving_model"], w8a8_cnn["x"]
  dense = save_stablehlo(model, tree, x, str(tmp_path / "dense"))
  packed = save_stablehlo(model, tree, x, str(tmp_path / "sparse"), sparse=formats)
  stored = sparse.pack_sites(tree, formats)["served"]
  saved = sum(tree["served"][s.split("/")[0]][s.split("/")[1]]["weight"].nbytes
              - stored[s.split("/")[0]][s.split("/")[1]]["weight"].nbytes for s in formats)
  leaves = lambda m: sum(leaf["bytes"] for leaf in m["leaves"])
  print(f"weights.safetensors dense {dense['weights_bytes']} B, sparse "
        f"{packed['weights_bytes']} B; "
        f"leaves {leaves(dense)} -> {leaves(packed)} B, expand module {packed['expand_bytes']} B")
  assert leaves(dense) - leaves(packed) == saved > 0
  assert packed["weights_bytes"] < dense["weights_bytes"] and packed["sparse"] == formats
  run = stablehlo.load_stablehlo(str(tmp_path / "sparse"))
  for rows in (1, 5):
    np.testing.assert_allclose(run(x[:rows]), expected[:rows], atol=1e-5)


def test_safetensors_round_trip(tmp_path):
  arrays = {"packed": np.arange(12, dtype=np.uint8).reshape(3, 4),
            "scale": np.linspace(0, 1, 5, dtype=np.float32), "empty": np.zeros((0,), np.int32),
            "half": np.ones((2, 2), jax.numpy.bfloat16), "flag": np.array([True, False])}
  path = str(tmp_path / "w.safetensors")
  stablehlo.write_safetensors(path, arrays)
  got = stablehlo.read_safetensors(path)
  assert list(got) == list(arrays)
  for name, a in arrays.items():
    assert got[name].dtype == a.dtype and got[name].shape == a.shape
    np.testing.assert_array_equal(got[name], a)
  header = int.from_bytes(open(path, "rb").read(8), "little")
  assert os.path.getsize(path) == 8 + header + sum(a.nbytes for a in arrays.values())
