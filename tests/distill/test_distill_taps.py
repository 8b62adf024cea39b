import flax.linen as nn
import jax
import numpy as np
import pytest

from compressjax.core import Rule, compress
from compressjax.distill.taps import apply_with_taps, available_paths, taps
from compressjax.models import get_model
from compressjax.quant import LSQ

X = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))


MODEL = get_model("cnn", 10, widths=(4, 8), hidden=16)
VARS = MODEL.init(jax.random.key(0), X)


def _cnn():
  return MODEL, VARS


def test_taps_return_the_tensors_the_model_computes():
  model, v = _cnn()
  feats = taps(model, v, X, ["conv0", "bn0", "hidden", "head"])
  p = v["params"]
  conv0 = nn.Conv(4, (3, 3), padding="SAME", use_bias=False).apply(
      {"params": p["conv0"]}, X)
  np.testing.assert_allclose(feats["conv0"], conv0, rtol=1e-5, atol=1e-6)
  bn0 = nn.BatchNorm(use_running_average=True).apply(
      {"params": p["bn0"], "batch_stats": v["batch_stats"]["bn0"]}, conv0)
  np.testing.assert_allclose(feats["bn0"], bn0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats["head"], model.apply(v, X), rtol=1e-6)
  hidden_from_head = feats["hidden"]  # Dense output before the ReLU
  assert hidden_from_head.shape == (3, 16)
  relu_hidden = jax.nn.relu(hidden_from_head)
  np.testing.assert_allclose(relu_hidden @ p["head"]["kernel"] + p["head"]["bias"], feats["head"],
                             rtol=1e-5, atol=1e-5)


def test_taps_under_jit_and_with_mutable_state():
  model, v = _cnn()
  jitted = jax.jit(lambda v, x: taps(model, v, x, ["conv1"]))(v, X)
  eager = taps(model, v, X, ["conv1"])["conv1"]  # op by op: float rounding differs from jit's
  np.testing.assert_allclose(jitted["conv1"], eager, rtol=1e-5, atol=1e-6)
  out, feats, state = apply_with_taps(model, v, X, paths=["bn1"], mutable=["batch_stats"],
                                      train=True)
  ref_out, ref_state = model.apply(v, X, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(out, ref_out, rtol=1e-6)
  assert set(state) == {"batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, state, dict(ref_state))
  assert feats["bn1"].shape == (3, 4, 4, 8)


def test_taps_see_compressed_models_unchanged_paths():
  model, _ = _cnn()
  qmodel = compress(model, [Rule(pattern="conv", weight=LSQ(bits=4))])
  qv = qmodel.init(jax.random.key(0), X)
  feats = taps(qmodel, qv, X, ["conv0", "head"])
  np.testing.assert_allclose(feats["head"], qmodel.apply(qv, X), rtol=1e-6)
  assert "conv0" in available_paths(qmodel, qv, X)


def test_unknown_path_is_refused_with_the_available_paths():
  model, v = _cnn()
  with pytest.raises(ValueError, match=r"\['conv9'\].*available paths: bn0, bn1, conv0"):
    taps(model, v, X, ["conv0", "conv9"])
  with pytest.raises(TypeError, match="sequence"):
    taps(model, v, X, "conv0")
  assert available_paths(model, v, X) == ["bn0", "bn1", "conv0", "conv1", "head", "hidden"]


def test_taps_of_an_nnx_module_by_submodule_path():
  import jax.numpy as jnp
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(4, 8, rngs=rngs)
      self.bn = nnx.BatchNorm(8, rngs=rngs)
      self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(self.bn(self.a(x)))

  net, x = Net(nnx.Rngs(0)), jnp.ones((2, 4))
  out, feats, _ = apply_with_taps(net, None, x, paths=["a", "b"])
  np.testing.assert_allclose(feats["b"], out, rtol=1e-6)
  np.testing.assert_allclose(feats["a"], net.a(x), rtol=1e-6)
  assert type(net.a) is nnx.Linear  # the model itself is not modified
  assert available_paths(net, None, x) == ["a", "b", "bn"]
  with pytest.raises(ValueError, match="available paths: a, b, bn"):
    taps(net, None, x, ["c"])


def test_taps_of_a_compressed_nnx_module_are_the_compressed_features():
  import jax.numpy as jnp
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(4, 8, rngs=rngs)
      self.b = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(jnp.tanh(self.a(x)))

  net, x = Net(nnx.Rngs(0)), jax.random.normal(jax.random.key(1), (3, 4))
  cm = compress(net, [Rule(pattern="^a/", weight=LSQ(bits=2))], x)
  out, feats, _ = apply_with_taps(cm, None, x, paths=["a", "b"])
  np.testing.assert_allclose(out, cm(x), rtol=1e-6)
  np.testing.assert_allclose(feats["b"], out, rtol=1e-6)
  float_a = net.a(x)
  assert not np.allclose(feats["a"], float_a, atol=1e-3)  # the 2-bit kernel's output, not float
  np.testing.assert_allclose(feats["a"], x @ _fake_kernel(cm, net) + net.a.bias[...], rtol=1e-5,
                             atol=1e-6)
  grads = nnx.grad(lambda m: jnp.sum(apply_with_taps(m, None, x, paths=["a"])[1]["a"] ** 2))(cm)
  assert float(jnp.abs(grads.site_params["a"]["kernel"]["weight"]["step"][...]).sum()) > 0
  assert available_paths(cm, None, x) == ["a", "b"]
  with pytest.raises(ValueError, match="available paths: a, b"):
    taps(cm, None, x, ["c"])


def _fake_kernel(cm, net):
  rule = cm.compression.rules[0]
  params = {"step": cm.site_params["a"]["kernel"]["weight"]["step"][...]}
  return rule.weight.fake(net.a.kernel[...], params, {})


def test_taps_of_a_compressed_nnx_custom_einsum_layer_beside_a_scanned_stack():
  import jax.numpy as jnp
  from flax import nnx

  class Custom(nnx.Module):
    def __init__(self, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (4, 6)))

    def __call__(self, x):
      return jnp.einsum("bi,io->bo", x, self.w[...])

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.custom = Custom(rngs)

      @nnx.split_rngs(splits=3)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return nnx.Linear(6, 6, rngs=rngs)

      self.stack = make(rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
      def body(layer, x):
        return jnp.tanh(layer(x))

      return body(self.stack, self.custom(x))

  net, x = Net(nnx.Rngs(0)), jax.random.normal(jax.random.key(1), (3, 4))
  cm = compress(net, [Rule(pattern=".", weight=LSQ(bits=2))], x)
  out, feats, _ = apply_with_taps(cm, None, x, paths=["custom"])
  np.testing.assert_allclose(out, cm(x), rtol=1e-6)
  assert not np.allclose(feats["custom"], net.custom(x), atol=1e-3)  # its 2-bit einsum output
