"""Cost model: hand-computed MACs/params for single layers, digits CNN totals, bits handling."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax import cost
from compressjax.models import CNN, MobileNetV2, ViT, resnet20


def _site(layer, shape, **kwargs):
  """Profile of a single layer applied to zeros of ``shape``; returns its only site."""
  prof = cost.profile(layer, jnp.zeros(shape), **kwargs)
  assert len(prof.sites) == 1
  return prof.sites[0]


def test_dense_hand_computed():
  s = _site(nn.Dense(5), (3, 4))
  assert (s.kind, s.macs, s.params, s.kernel_shape) == ("dot_general", 4 * 5, 4 * 5 + 5, (4, 5))
  assert (s.path, s.module, s.param) == ("kernel", "", "kernel")
  assert (s.input_shape, s.output_shape) == ((3, 4), (3, 5))
  # Sequence input: every one of the 7 tokens costs 4 * 5 MACs.
  assert _site(nn.Dense(5), (3, 7, 4)).macs == 7 * 4 * 5


def test_conv_stride2_same_hand_computed():
  s = _site(nn.Conv(8, (3, 3), strides=2, padding="SAME"), (2, 9, 9, 3))
  assert s.output_shape == (2, 5, 5, 8)
  assert s.macs == 5 * 5 * 8 * (3 * 3 * 3)
  assert s.params == 3 * 3 * 3 * 8 + 8


def test_depthwise_conv_hand_computed():
  s = _site(nn.Conv(6, (3, 3), feature_group_count=6, use_bias=False), (2, 8, 8, 6))
  assert s.kernel_shape == (3, 3, 1, 6)
  assert (s.macs, s.params) == (8 * 8 * 6 * 9, 9 * 6)
  # Depth multiplier 2: every output channel still sees one input channel.
  assert _site(nn.Conv(12, (3, 3), feature_group_count=6), (2, 8, 8, 6)).macs == 8 * 8 * 12 * 9


def test_einsum_dense_general_conv_transpose_hand_computed():
  s = _site(nn.Einsum((4, 6), "btd,dh->bth"), (2, 5, 4))
  assert (s.kind, s.macs, s.params) == ("dot_general", 5 * 4 * 6, 4 * 6 + 6)
  assert _site(nn.Einsum((4, 6), "...d,dh->...h"), (2, 3, 5, 4)).macs == 3 * 5 * 4 * 6
  s = _site(nn.DenseGeneral(3, axis=(-2, -1)), (2, 4, 5))
  assert (s.kind, s.macs, s.params, s.kernel_shape) == ("dot_general", 60, 63, (4, 5, 3))
  assert s.view_shape == (4, 5, 3)  # the weight as the quantizer sees it: (*contracting, N)
  s = _site(nn.ConvTranspose(5, (3, 3), strides=(2, 2)), (2, 4, 4, 3))
  assert s.output_shape == (2, 8, 8, 5)
  assert (s.kind, s.macs) == ("conv_general_dilated", 4 * 4 * 3 * 3 * 3 * 5)


@pytest.fixture(scope="module")
def digits():
  return cost.profile(CNN(), jnp.zeros((4, 8, 8, 1)))


def test_digits_cnn_totals(digits):
  macs = {"conv0/kernel": 8 * 8 * 32 * 9, "conv1/kernel": 4 * 4 * 64 * 9 * 32,
          "hidden/kernel": 256 * 128, "head/kernel": 128 * 10}
  assert {s.path: s.macs for s in digits.sites} == macs
  assert digits.macs == digits.site_macs == sum(macs.values()) == 347_392
  params = {"conv0/kernel": 288, "conv1/kernel": 18_432, "hidden/kernel": 256 * 128 + 128,
            "head/kernel": 1290}
  assert {s.path: s.params for s in digits.sites} == params
  assert digits.other_params == 2 * 32 + 2 * 64  # BatchNorm scale and bias: params, not sites
  assert digits.total_params == sum(params.values()) + 192 == 53_098
  assert digits.extra_macs == {}


def test_macs_are_per_example_and_abstract_inputs_work():
  x = jax.ShapeDtypeStruct((16, 8, 8, 1), jnp.float32)
  p16 = cost.profile(CNN(), x, train=True)
  p1 = cost.profile(CNN(), jnp.zeros((1, 8, 8, 1)))
  assert p16.batch_size == 16 and p16.macs == p1.macs


def test_bitops_and_size(digits):
  assert digits.bitops(4, 8) == digits.macs * 32
  assert digits.bitops(None, None) == digits.macs * 32 * 32
  mixed = digits.bitops({"conv0/kernel": 8, "head/kernel": None, "conv1/kernel": 2},
                        {"conv1/kernel": 4, "hidden/kernel": 6})
  assert mixed == 18_432 * 8 * 32 + 294_912 * 2 * 4 + 32_768 * 32 * 6 + 1280 * 32 * 32
  kernels, biases = 288 + 18_432 + 32_768 + 1280, 128 + 10
  assert digits.size_bytes(8) == kernels + 4 * biases + 4 * digits.other_params
  assert digits.size_bytes(None) == 4 * digits.total_params
  assert digits.bytes_per_site({"hidden/kernel": 2})["hidden/kernel"] == 32_768 * 2 / 8 + 128 * 4


def test_bitops_differentiable_fracbits_penalty(digits):
  def penalty(lam_w, lam_a):
    return digits.bitops({"conv1/kernel": lam_w}, {"conv1/kernel": lam_a})

  gw, ga = jax.jit(jax.grad(penalty, argnums=(0, 1)))(jnp.float32(3.5), jnp.float32(4.0))
  assert np.isclose(gw, 294_912 * 4.0) and np.isclose(ga, 294_912 * 3.5)
  g = jax.grad(lambda lam: digits.size_bytes({"conv1/kernel": lam}))(jnp.float32(3.0))
  assert np.isclose(g, 18_432 / 8)


def test_kernel_wise_bits_use_their_mean(digits):
  lam = jnp.linspace(2.0, 6.0, 64)
  assert np.isclose(digits.bitops({"conv1/kernel": lam}, 8),
                    digits.bitops({"conv1/kernel": 4.0}, 8))
  with pytest.raises(ValueError, match=r"'conv1/kernel' has shape \(32,\).*\(3, 3, 32, 64\)"):
    digits.bitops({"conv1/kernel": jnp.ones(32)}, 8)


def test_bad_bits_and_inputs(digits):
  with pytest.raises(ValueError, match=r"unknown sites \['conv9'\].*conv0/kernel, conv1/kernel, "
                     "hidden/kernel, head/kernel"):
    digits.bitops({"conv9": 4}, 8)
  with pytest.raises(ValueError, match="'head/kernel' is 40.*0..32"):
    digits.size_bytes({"head/kernel": 40})
  with pytest.raises(ValueError, match="a_bits for site 'conv0/kernel' is -1"):
    digits.bitops(4, -1)
  with pytest.raises(TypeError, match="w_bits for site 'conv0/kernel' must be a number.*str"):
    digits.bitops("4", 8)
  with pytest.raises(KeyError, match="no site 'conv2'"):
    digits["conv2"]  # pylint: disable=pointless-statement
  with pytest.raises(TypeError, match="flax.linen or flax.nnx Module"):
    cost.profile(lambda x: x, jnp.zeros((1, 2)))
  with pytest.raises(ValueError, match="leading batch dimension"):
    cost.profile(nn.Dense(2), jnp.float32(1.0))


def test_shared_module_counts_macs_per_call_params_once():
  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      dense = nn.Dense(4, name="shared")
      return dense(nn.relu(dense(x)))

  prof = cost.profile(Twice(), jnp.zeros((2, 4)))
  first, second = prof["shared/kernel"], prof["shared/kernel#1"]  # one site per use
  assert (first.macs, second.macs) == (16, 16)
  assert (first.params, second.params) == (20, 0)  # the shared kernel and bias counted once
  assert prof.site_macs == 2 * 16 and prof.site_params == prof.total_params == 20


def test_vit_attention_extra_macs_and_sites():
  prof = cost.profile(ViT(hidden=16, depth=1, heads=2, mlp_dim=24, patch_size=4),
                      jnp.zeros((2, 8, 8, 3)))
  tokens = 1 + 4
  # QK^T and AV: activation x activation sites of block0/attn, MACs only in extra_macs.
  assert len(prof.extra_macs) == 2
  assert all(name.startswith("block0/attn/") for name in prof.extra_macs)
  assert sum(prof.extra_macs.values()) == 2 * tokens * tokens * 16
  assert prof["block0/attn/query/kernel"].macs == tokens * 16 * 16
  fc1 = prof["block0/mlp/fc1/kernel"]
  assert (fc1.kind, fc1.macs) == ("dot_general", tokens * 16 * 24)
  assert prof.macs == prof.site_macs + 2 * tokens * tokens * 16
  assert prof.bitops(8, 8) == prof.site_macs * 64  # act x act MACs are not in BitOPs
  assert prof.paths[0] == "patch_embed/kernel" and prof.paths[-1] == "head/kernel"


def test_reference_model_costs():
  # ResNet-20: ~41M MACs per CIFAR image; MobileNetV2 1.0 at 224: ~300M MACs, 3.5M params.
  assert 40e6 < cost.profile(resnet20(), jnp.zeros((1, 32, 32, 3))).macs < 42e6
  mnv2 = cost.profile(MobileNetV2(num_classes=1000), jnp.zeros((1, 224, 224, 3)))
  assert 295e6 < mnv2.macs < 305e6 and mnv2.total_params == 3_504_872
  assert mnv2["block1/depthwise/conv/kernel"].macs == 56 * 56 * 96 * 9


def test_table_and_json(digits):
  text = digits.table({"conv1/kernel": 4}, 8)
  lines = text.splitlines()
  assert lines[0].split() == ["path", "kind", "MACs", "params", "bits", "w/a", "BitOPs", "bytes"]
  assert len({len(line) for line in lines[:-1]}) == 1  # aligned columns
  conv1 = next(line for line in lines if line.startswith("conv1"))
  assert conv1.split() == ["conv1/kernel", "conv", "294,912", "18,432", "4/8", "9,437,184", "9,216"]
  assert lines[-2].startswith("total") and "347,392" in lines[-2]
  d = json.loads(digits.to_json({"conv1/kernel": 4}, 8))
  assert d["macs_are_per"] == "example"
  assert d["totals"]["macs"] == 347_392 and d["totals"]["params"] == 53_098
  assert d["totals"]["bitops"] == digits.bitops({"conv1/kernel": 4}, 8)
  assert d["sites"][1]["kernel_shape"] == [3, 3, 32, 64] and d["sites"][1]["w_bits"] == 4


def test_custom_layer_and_scan_stack_are_profiled():
  class Custom(nn.Module):  # its own parameter through jnp.einsum: a site like any Dense
    @nn.compact
    def __call__(self, x):
      w = self.param("w", nn.initializers.ones, (x.shape[-1], 3))
      return jnp.einsum("bi,io->bo", x, w)

  s = _site(Custom(), (2, 4))
  assert (s.path, s.macs, s.params) == ("w", 4 * 3, 12)

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return nn.Dense(4, name="fc")(x), None

  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
      return scan(name="layers")(x, None)[0]

  s = _site(Stack(), (2, 4))
  assert s.stack_lengths == (3,) and s.macs == 3 * 4 * 4 and s.params == 3 * (16 + 4)
