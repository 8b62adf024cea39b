# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Export and kernels: from fake-quant to packed integers to low-bit matmuls
#
# Training uses *fake* quantization (float values on an integer grid). Serving should read
# *real* integers: fewer bytes from memory, and int8/int4 arithmetic where the hardware has
# it. This notebook follows the data:
#
# 1. `QArray`: the one integer format that export writes, orbax saves and kernels read,
# 2. its planar packing of 4-bit and 2-bit codes into bytes,
# 3. the W4A16 (weight-only) and W8A8 Pallas kernels, run in interpret mode on CPU and
#    checked against their plain-`jnp` references,
# 4. the dispatcher that picks Pallas or XLA by platform and shape,
# 5. an exported CNN served through the dispatcher, and a pruned one whose zeros survive.
#
# On a GPU/TPU the same calls run the compiled Pallas kernels (`backend="pallas"`).

# %%
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

import compressjax as cj
import compressjax.prune  # noqa: F401  (cj.prune)
from compressjax import kernels
from compressjax.models import CNN
from compressjax.quant import LSQ, Uniform, per_group
from compressjax.qarray import pack, unpack
from compressjax.quant.recipes import recipe_rules
from compressjax.export import serving_paths

QUICK = os.environ.get("COMPRESSJAX_NOTEBOOK_QUICK", "0") == "1"  # everything here is small
rng = np.random.default_rng(0)
# Random keys from the "rbg" generator: on CPU they compile in a fraction of the time of the
# default threefry (seconds per model) and are just as deterministic.
jax.config.update("jax_default_prng_impl", "rbg")

# %% [markdown]
# ## QArray: codes, scales, logical shape
#
# A weight of any rank is viewed as a `(K, N)` matrix (`N` = last axis = output channels).
# Scales are per tensor `(1, 1)`, per channel `(1, N)` or per group of `group_size`
# consecutive rows `(K // group_size, N)`; `dequantize()` is `(code - zero_point) * scale`.
# Every quantizer's `export` writes one, and `dequantize()` equals its fake-quant output.

# %%
w = jnp.asarray(rng.normal(size=(64, 24)), jnp.float32)
quantizer = Uniform(bits=4, granularity=per_group(16))  # symmetric, 4 groups of 16 rows
qw = quantizer.export(w, {}, {})
print(f"QArray bits={qw.bits} signed={qw.signed} shape={qw.shape} group_size={qw.group_size}")
print(f"packed {qw.packed.dtype}{tuple(qw.packed.shape)}, scale {tuple(qw.scale.shape)}, "
      f"{qw.nbytes} bytes vs {w.size * 4} as float32")
np.testing.assert_allclose(qw.dequantize(), quantizer.fake(w, {}, {}), rtol=1e-6, atol=1e-6)
print(f"max |w - dequantize(w)| = {float(jnp.max(jnp.abs(w - qw.dequantize()))):.3f} "
      f"(half a step: {float(qw.scale.max()) / 2:.3f})")
assert qw.packed.shape == (32, 24) and qw.scale.shape == (4, 24)

# %% [markdown]
# ## Planar packing
#
# With `bits` in {1, 2, 4}, `per = 8 // bits` codes share a byte. `K` is split into `per`
# contiguous *planes* of `P = K / per` rows, plane `j` sits at bit offset `j * bits`: packed
# row `p` holds logical rows `p, P + p, ...`. A kernel reading packed rows `[r, r + b)` thus
# gets `per` contiguous, group-aligned row ranges, with no interleaving shuffle. Signed codes
# are stored with an offset of `2**(bits - 1)`.

# %%
codes = jnp.asarray([[-8], [-1], [0], [7], [3], [-4], [5], [1]])  # K=8, N=1, signed 4-bit
packed = pack(codes, bits=4, signed=True)
print("codes      ", codes.ravel().tolist())
print("packed rows", [f"0x{int(b):02x}" for b in packed.ravel()])
low, high = packed & 0xF, packed >> 4
print("low nibbles  (plane 0 = rows 0..3) - 8:", (low.ravel().astype(int) - 8).tolist())
print("high nibbles (plane 1 = rows 4..7) - 8:", (high.ravel().astype(int) - 8).tolist())
np.testing.assert_array_equal(unpack(packed, bits=4, signed=True, k=8), codes)
np.testing.assert_array_equal(low.ravel().astype(int) - 8, codes[:4].ravel())

two_bit = cj.QArray.from_codes(jnp.asarray(rng.integers(-2, 2, size=(32, 8))), 0.5, bits=2,
                               signed=True)
print(f"2-bit: {two_bit.packed.shape[0]} packed rows for K={two_bit.k} (4 codes per byte)")
assert two_bit.packed.shape == (8, 8)

# %% [markdown]
# ## W4A16: weight-only kernel vs its reference
#
# `weight_only_matmul` keeps the weight packed, unpacks `block_k` rows per step with shifts
# and masks, applies the group scales and multiplies by the bf16 activations, accumulating
# in float32. `weight_only_reference` defines its meaning: `x @ w.dequantize()`.

# %%
w4 = Uniform(bits=4, granularity=per_group(32)).export(
    jnp.asarray(rng.normal(size=(256, 64)), jnp.float32), {}, {})
x = jnp.asarray(rng.normal(size=(4, 256)), jnp.bfloat16)
y_kernel = kernels.weight_only_matmul(x, w4, interpret=True)
y_ref = kernels.weight_only_reference(x, w4)
err = float(jnp.max(jnp.abs(y_kernel.astype(jnp.float32) - y_ref.astype(jnp.float32))))
scale = float(jnp.max(jnp.abs(y_ref.astype(jnp.float32))))
print(f"W4A16 {x.shape} @ {w4.shape}: max |kernel - reference| = {err:.3f} (outputs up to "
      f"{scale:.1f}; bf16 rounding)")
assert y_kernel.dtype == jnp.bfloat16 and err <= 2e-2 * scale

# %% [markdown]
# ## W8A8: int8 x int8 -> int32
#
# Activations are quantized per row (token) on the fly, `quantize_rows`; the kernel reads the
# signed 8-bit `QArray` storage directly (`codes + 128`, undone in registers with
# `w_offset=128`), accumulates in int32 and applies both scales at the end.

# %%
w8 = Uniform(bits=8, granularity=cj.quant.PER_CHANNEL).export(
    jnp.asarray(rng.normal(size=(128, 32)), jnp.float32), {}, {})
x = jnp.asarray(rng.normal(size=(4, 128)), jnp.float32)
x_q, x_scale = kernels.quantize_rows(x)
args = (x_q, x_scale, w8.packed, w8.scale)
y_kernel = kernels.w8a8_matmul(*args, w_offset=128, interpret=True)
y_ref = kernels.w8a8_reference(*args, w_offset=128)
y_float = x @ w8.dequantize()
rel = float(jnp.max(jnp.abs(y_ref - y_float)) / jnp.max(jnp.abs(y_float)))
print(f"W8A8: max |kernel - reference| = {float(jnp.max(jnp.abs(y_kernel - y_ref))):.2e}; "
      f"relative error vs the float matmul {rel:.4f} (int8 activations)")
np.testing.assert_allclose(y_kernel, y_ref, rtol=1e-6, atol=1e-5)
assert rel < 2e-2

# %% [markdown]
# ## The dispatcher
#
# `kernels.matmul(x, w)` is the one entry point: `x (..., K)` float, `w` a `QArray`.
# `backend=None` chooses by platform and shape: XLA on CPU; on GPU/TPU the Pallas kernel
# where it was measured faster on that device (typically small, decode-like `M`, bound by
# reading the weight, which 4-bit storage cuts 4x against bf16), XLA otherwise (large `M` is
# bound by FLOPs; unmeasured shapes and devices, weights the kernel cannot read). Any backend
# can be forced.

# %%
x = jnp.asarray(rng.normal(size=(2, 3, 256)), jnp.float32)  # leading axes are batch
outs = {b: kernels.matmul(x, w4, backend=b) for b in ("xla", "interpret", "reference")}
for b, y in outs.items():
  err = float(jnp.max(jnp.abs(y - outs["reference"])))
  print(f"{b:9s} {y.shape}  max |y - reference| = {err:.2e}")
  np.testing.assert_allclose(y, outs["reference"], rtol=1e-5, atol=1e-4)
y8 = kernels.matmul(x[..., :128], w8, act_bits=8, backend="interpret")
np.testing.assert_allclose(y8, kernels.matmul(x[..., :128], w8, act_bits=8, backend="reference"),
                           rtol=1e-6, atol=1e-5)

print(f"\n{'':24s}" + "".join(f"{p:>8s}" for p in ("cpu", "gpu", "tpu")))
for m in (1, 64, 512):
  for name, q, act in (("W4A16", w4, None), ("W8A8", w8, 8)):
    row = [kernels.choose_backend(m, q, act_bits=act, platform=p) for p in ("cpu", "gpu", "tpu")]
    print(f"M={m:<4d} {name:6s} {tuple(q.shape)!s:11s}" + "".join(f"{r:>8s}" for r in row))
assert kernels.choose_backend(1, w4, platform="cpu") == "xla"  # Pallas would only interpret
# On GPU/TPU the choice follows what was measured on that device (no measurement: XLA).
assert {kernels.choose_backend(m, w4, platform="gpu") for m in (1, 512)} <= {"pallas", "xla"}

# %% [markdown]
# ## Serving an exported CNN through the dispatcher
#
# The zoo CNN with the LSQ recipe (4-bit weights, 8-bit first and last layer, 8-bit
# activations) plus one rule giving the hidden Dense layer 4-bit weights in groups of 32
# rows (the layout the W4A16 kernel is made for). Initialised from float weights on a batch
# and exported (from example inputs: export traces the model) with a forced backend. Each site
# is served on one path, which `serving_paths` reports with its reason: `int8 dot` /
# `int8 conv` where weights and inputs are both 8-bit integers, `kernel` (the packed
# `QArray` through `kernels.matmul`, e.g. the 4-bit grouped hidden layer), `xla dequant`
# (the dequantized weight), or `float`. Every backend serves the same logits as the
# fake-quant model.
#
# Bad configurations fail early and name the site: groups of 32 rows do not fit the
# 3x3x1 = 9 rows of `conv0/kernel`.

# %%
model = CNN(widths=(8, 16), hidden=32)
images = jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32)
float_vars = jax.jit(model.init)(jax.random.key(0), images)
rules = recipe_rules("lsq", cj.discover(model, images), w_bits=4, a_bits=8)
grouped = LSQ(bits=4, granularity=per_group(32))
try:
  cj.init_from(cj.compress(model, [cj.Rule(pattern=".", weight=grouped)]), float_vars, images)
  raise AssertionError("a group size that does not divide K should be refused")
except ValueError as e:
  print("refused:", e)

rules.insert(2, cj.Rule(pattern="^hidden$", weight=grouped, act=rules[-1].act))
print([(r.pattern, type(r.weight).__name__, r.weight.bits, r.act and r.act.bits) for r in rules])
qmodel = cj.compress(model, rules)
qvars = jax.jit(functools.partial(cj.init_from, qmodel))(float_vars, images)
fake = jax.jit(lambda v: qmodel.apply(v, images))(qvars)

for backend in ("xla", "interpret", "reference"):
  serving_model, serving_vars = cj.export(qmodel, qvars, images, backend=backend)
  served = jax.jit(lambda v: serving_model.apply(v, images))(serving_vars)
  print(f"served with {backend:9s}: max |served - fake-quant| = "
        f"{float(jnp.max(jnp.abs(served - fake))):.2e}")
  np.testing.assert_allclose(served, fake, rtol=1e-5, atol=1e-5)

paths = serving_paths(serving_model, serving_vars, images)
for name, (path, why) in paths.items():
  print(f"{name:14s} served as {path:12s} {why}")
assert paths["hidden/kernel"][0] == "kernel", paths  # 4-bit groups: the low-bit kernel
hidden = serving_vars["served"]["hidden"]["kernel"]["weight"]
print(f"hidden kernel: {hidden.bits}-bit, {tuple(hidden.packed.shape)} packed bytes, scales "
      f"{tuple(hidden.scale.shape)}; on a GPU, batch 1 would use "
      f"{kernels.choose_backend(1, hidden, platform='gpu')}, batch 256 "
      f"{kernels.choose_backend(256, hidden, platform='gpu')}")
report = cj.size_report(serving_vars)
print(f"{cj.size_report(float_vars).total_bytes:,} bytes float -> {report.total_bytes:,} bytes "
      f"served ({report.qarray_bytes:,} in QArrays)")
assert hidden.bits == 4 and hidden.group_size == 32
assert report.total_bytes < 0.4 * cj.size_report(float_vars).total_bytes

# %% [markdown]
# ## Pruned and quantized: zeros stay zeros
#
# Pruning (notebook 03) leaves exact zeros. A symmetric quantizer such as LSQ maps 0 to
# code 0 anyway, but not every quantizer does (DoReFa's grid has no zero); wrapping the
# weight quantizer in `cj.core.keep_zeros` forces pruned positions to 0 in the fake-quant
# forward pass and writes the zero code for them on export, so the sparsity survives into
# the packed weights.

# %%
order = cj.prune.call_order(model, float_vars, images)
pruned_params, masks = cj.prune.prune_once(cj.prune.magnitude(0.5, order=order),
                                           float_vars["params"])
sparse_rules = [cj.Rule(pattern="^hidden$", weight=cj.core.keep_zeros(grouped), act=r.act)
                if r.pattern == "^hidden$" else r for r in rules]
sparse_model = cj.compress(model, sparse_rules)
sparse_vars = jax.jit(functools.partial(cj.init_from, sparse_model))(
    {**float_vars, "params": pruned_params}, images)
serving_model, serving_vars = cj.export(sparse_model, sparse_vars, images, backend="xla")
codes = np.asarray(serving_vars["served"]["hidden"]["kernel"]["weight"].codes())
pruned = ~np.asarray(masks["hidden"]["kernel"])
print(f"hidden: {pruned.mean():.0%} pruned; exported codes at pruned positions: "
      f"{np.unique(codes[pruned]).tolist()}; nonzero codes elsewhere: "
      f"{np.count_nonzero(codes[~pruned]) / (~pruned).sum():.0%}")
assert np.all(codes[pruned] == 0) and 0.45 < pruned.mean() < 0.55
served = jax.jit(lambda v: serving_model.apply(v, images))(serving_vars)
np.testing.assert_allclose(served, jax.jit(lambda v: sparse_model.apply(v, images))(sparse_vars),
                           rtol=1e-5, atol=1e-5)
