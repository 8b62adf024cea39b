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
# # Quickstart: quantize any Flax model, train it, export it, serve it
#
# compressjax works on **unmodified** Flax Linen models. You say which layers get which
# quantizer with regex rules on module paths; `cj.compress` returns a model with the usual
# `init`/`apply`, whose quantizer state (learned step sizes, calibrated ranges) lives beside
# `params`. Then:
#
# 1. train a float model on the offline digits dataset,
# 2. quantization-aware training (QAT): 8-bit first/last layer, 4-bit LSQ body, with the
#    quantizer parameters on their own optax settings,
# 3. post-training quantization (PTQ): calibrate static ranges on a few batches, no training,
# 4. export to packed integers, compare sizes and outputs, serve the result under `jit`.
#
# `QUICK` (set by the test through `COMPRESSJAX_NOTEBOOK_QUICK=1`) shortens the training.

# %%
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import compressjax as cj
from compressjax.data import batches, load_dataset

QUICK = os.environ.get("COMPRESSJAX_NOTEBOOK_QUICK", "0") == "1"
FLOAT_EPOCHS, QAT_EPOCHS = (3, 2) if QUICK else (10, 5)
BATCH = 64
# Random keys from the "rbg" generator: on CPU they compile in a fraction of the time of the
# default threefry (seconds per model) and are just as deterministic.
jax.config.update("jax_default_prng_impl", "rbg")

# %% [markdown]
# ## A model of your own
#
# Any Linen model: nothing in it knows about quantization. Every operation that reads a
# parameter (the `dot_general` of a Dense, the convolution of a Conv, in any layer) is a
# *site* that rules can match, named `module/param` (`"conv/kernel"`).

# %%
class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2), name="conv")(x))
    x = nn.relu(nn.Dense(32, name="fc")(x.reshape(x.shape[0], -1)))
    return nn.Dense(10, name="head")(x)


digits = load_dataset("digits")  # 8x8 scikit-learn digits, prepared offline on first use
x_test, y_test = jnp.asarray(digits.test.x), jnp.asarray(digits.test.y)
example = jnp.asarray(digits.train.x[:BATCH])
model = SmallCNN()
sites = cj.discover(model, example)  # every op that reads a parameter, in call order
for s in sites:
  print(f"{s.name:12s} {s.op:22s} weight {s.shapes[s.weight_index]}")
assert [s.name for s in sites] == ["stem/kernel", "conv/kernel", "fc/kernel", "head/kernel"]

# %% [markdown]
# ## Train the float model with optax
#
# A plain training step: the same function trains the quantized model later, because a
# compressed model is called exactly like the original.

# %%
def make_step(model, tx):
  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(params):
      logits = model.apply({**variables, "params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {**variables, "params": params}, opt_state, loss

  return step


def fit(model, variables, tx, epochs, seed=0):
  step, opt_state = make_step(model, tx), tx.init(variables["params"])
  for epoch in range(epochs):
    for b in batches(digits.train, BATCH, seed=seed, epoch=epoch):
      variables, opt_state, loss = step(variables, opt_state, b["image"], b["label"])
  return variables, float(loss)


@functools.cache  # one compilation per model, however often it is evaluated
def eval_logits(model):
  return jax.jit(lambda v: model.apply(v, x_test))


def accuracy(model, variables):
  return float(jnp.mean(jnp.argmax(eval_logits(model)(variables), -1) == y_test))


float_vars = jax.jit(model.init)(jax.random.key(0), example)
float_vars, loss = fit(model, float_vars, optax.adam(3e-3), FLOAT_EPOCHS)
float_acc = accuracy(model, float_vars)
print(f"float: loss {loss:.3f}, test accuracy {float_acc:.3f}")
assert float_acc > 0.8

# %% [markdown]
# ## Rules: 8-bit edges, 4-bit LSQ body
#
# First matching rule wins. The first layer keeps a float input (the image) and 8-bit
# weights, the last layer 8-bit weights and inputs, every other site 4-bit LSQ weights and
# unsigned 4-bit LSQ inputs (they follow a ReLU). `cj.core.with_edges` writes the two edge
# rules for you from the discovered sites, whatever the layers are called.

# %%
q = cj.quant
body = cj.Rule(pattern=".", weight=q.LSQ(bits=4), act=q.LSQ(bits=4, kind="activation"))
rules = cj.core.with_edges(
    [body], sites,
    first=cj.Rule(pattern="", weight=q.LSQ(bits=8)),
    last=cj.Rule(pattern="", weight=q.LSQ(bits=8), act=q.LSQ(bits=8, kind="activation")),
)
show = lambda t: "float" if t is None else f"{type(t).__name__}({t.bits} bits)"
for r in rules:  # the same as writing Rule("^stem/kernel$", ...), Rule("^head/kernel$", ...), body
  print(f"{r.pattern:15s} weight {show(r.weight):15s} input {show(r.act)}")
assert [r.pattern for r in rules] == ["^stem/kernel$", "^head/kernel$", "."]

qmodel = cj.compress(model, rules)

# %% [markdown]
# ## Quantization-aware training
#
# `cj.init_from` starts the quantized model from the float weights and sets every LSQ step
# size from the real weights and activations of one batch (one forward pass; a pure
# function, so jit it). The LSQ steps are ordinary entries of `params`, under
# `params["compressjax"]`, nested by site name (`["fc"]["kernel"]["weight"]["step"]`, and
# `["input"]["step"]` for the activation's); your own `params["fc"]["kernel"]` is untouched.
# `cj.param_labels` labels them so that `optax.multi_transform` gives them their own
# optimizer: no weight decay on step sizes.

# %%
qvars = jax.jit(functools.partial(cj.init_from, qmodel))(float_vars, example)
print({k: sorted(v) for k, v in qvars["params"]["compressjax"].items()})
fc_step = lambda v: float(v["params"]["compressjax"]["fc"]["kernel"]["weight"]["step"])
labels = cj.param_labels(qvars["params"])
assert labels["compressjax"]["fc"]["kernel"]["weight"]["step"] == "quantizer"
assert labels["fc"]["kernel"] == "model"

tx = optax.multi_transform(
    {"model": optax.adamw(1e-3, weight_decay=1e-4), "quantizer": optax.adam(1e-3)}, labels)
qat_start_acc = accuracy(qmodel, qvars)
step_before = fc_step(qvars)
qvars, loss = fit(qmodel, qvars, tx, QAT_EPOCHS, seed=1)
qat_acc = accuracy(qmodel, qvars)
print(f"W4A4 (8-bit edges): {qat_start_acc:.3f} before QAT -> {qat_acc:.3f} after "
      f"(float {float_acc:.3f}); fc step {step_before:.4f} -> "
      f"{fc_step(qvars):.4f}")
assert qat_acc > 0.75
assert fc_step(qvars) != step_before  # the step size is learned

# %% [markdown]
# ## Post-training quantization with calibration
#
# No training at all: static quantizers record activation ranges over a few calibration
# batches (`cj.calibrate` updates the `quant_stats` collection). Weights are quantized per
# output channel from their own range. Using a static quantizer before calibration fails
# with an error that names the layer.

# %%
ptq_rules = cj.core.with_edges(
    [cj.Rule(pattern=".", weight=q.Uniform(bits=8, granularity=q.PER_CHANNEL),
             act=q.Uniform(bits=8, signed=False, symmetric=False, calibration="minmax",
                           dynamic=False))],
    sites, first=cj.Rule(pattern="", weight=q.Uniform(bits=8, granularity=q.PER_CHANNEL)))
ptq_model = cj.compress(model, ptq_rules)
# Fresh quantizer statistics beside the trained float weights (these quantizers learn nothing).
ptq_vars = {**jax.jit(ptq_model.init)(jax.random.key(0), example), "params": float_vars["params"]}
try:
  ptq_model.apply(ptq_vars, example)
  raise AssertionError("an uncalibrated static quantizer should be refused")
except ValueError as e:
  print("before calibration:", str(e)[:110], "...")

calib = (b["image"] for _, b in zip(range(4), batches(digits.train, BATCH, seed=2, epoch=0)))
ptq_vars = cj.calibrate(ptq_model, ptq_vars, calib)
ptq_acc = accuracy(ptq_model, ptq_vars)
print(f"PTQ W8A8: {ptq_acc:.3f} (float {float_acc:.3f})")
assert ptq_acc > float_acc - 0.05

# %% [markdown]
# ## Export to packed integers and compare
#
# `cj.export` replaces every quantized kernel by a `QArray` (4-bit codes packed two per
# byte, with their scales) in `serving_vars["served"]` (nested by site name; the float
# kernels it replaces are dropped from `params`) and returns the same model in serving mode.
# It traces the model, so it takes example inputs (arrays or `jax.ShapeDtypeStruct`s).
# `serving_paths` tells how each site is served (int8 dot / int8 conv / kernel /
# xla dequant / float, and why). The served outputs equal the fake-quant outputs up to float
# rounding: what you trained is what you serve.

# %%
from compressjax.export import serving_paths  # pylint: disable=g-import-not-at-top

serving_model, serving_vars = cj.export(qmodel, qvars, example)
for name, (path, why) in serving_paths(serving_model, serving_vars, example).items():
  print(f"{name:12s} served as {path:12s} {why}")
assert "kernel" not in serving_vars["params"]["fc"]  # replaced by its QArray
fc = serving_vars["served"]["fc"]["kernel"]["weight"]
print(f"fc kernel: {type(fc).__name__} bits={fc.bits} shape={fc.shape} packed {fc.packed.dtype}"
      f"{tuple(fc.packed.shape)} scale {tuple(fc.scale.shape)}")
assert isinstance(fc, cj.QArray) and fc.bits == 4 and fc.packed.size == fc.k * fc.n // 2

sizes = {name: cj.size_report(v).total_bytes for name, v in
         [("float", float_vars), ("W4 packed", serving_vars)]}
print(f"{sizes['float']:,} bytes float -> {sizes['W4 packed']:,} bytes packed "
      f"({sizes['float'] / sizes['W4 packed']:.1f}x smaller)")
assert sizes["W4 packed"] < 0.35 * sizes["float"]

fake = eval_logits(qmodel)(qvars)
served = eval_logits(serving_model)(serving_vars)
float_out = eval_logits(model)(float_vars)
agree = float(jnp.mean(served.argmax(-1) == float_out.argmax(-1)))
print(f"max |served - fake-quant| = {float(jnp.max(jnp.abs(served - fake))):.2e}; "
      f"served and float model predict the same class for {agree:.1%} of the test images")
np.testing.assert_allclose(served, fake, rtol=1e-4, atol=1e-4)

# %% [markdown]
# ## Serve with jit
#
# The serving model is a normal Flax model whose variables are a pytree holding `QArray`s:
# `jax.jit` it like any model. Each site runs on the path `serving_paths` printed above
# (integer dots/convs where both operands are int8, the low-bit kernel dispatcher or an
# XLA dequantize otherwise; see `04_export_and_kernels.py`).

# %%
predict = jax.jit(lambda v, x: jnp.argmax(serving_model.apply(v, x), -1))
preds = predict(serving_vars, x_test[:16])
print("predicted", np.asarray(preds), "\nlabels   ", np.asarray(y_test[:16]))
served_acc = float(jnp.mean(predict(serving_vars, x_test) == y_test))
print(f"served accuracy {served_acc:.3f} (fake-quant {qat_acc:.3f}, float {float_acc:.3f})")
assert abs(served_acc - qat_acc) < 0.01
