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
# # Mixed precision: AdaBits and FracBits
#
# Not every layer needs the same number of bits, and not every deployment target wants the
# same bit-width. Two methods:
#
# * **AdaBits** (Jin et al. 2020): *one* set of weights that runs at several bit-widths.
#   Each bit-width keeps its own clip levels and BatchNorm ("switchable"); training sums the
#   losses of all bit-widths in one step. Pick the bit-width at deployment time.
# * **FracBits** (Yang & Jin 2021): each layer's bit-width is a learnable *fractional*
#   number, blended between its two neighbouring integers, pulled towards a BitOPs budget
#   computed by the cost model (`compressjax.cost`). It is then rounded to integers within
#   1% of the budget, giving a per-layer bit allocation (a JSON file, a table, a plot) that
#   becomes ordinary `Rule`s.
#
# Both work on the unmodified zoo CNN (`compressjax.models.CNN`, Conv-BN-ReLU stages).

# %%
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from IPython.display import Image, display

from compressjax import cost
from compressjax.core import compress, discover
from compressjax.data import batches, load_dataset
from compressjax.mixed import adabits as ab
from compressjax.mixed import fracbits as fb
from compressjax.mixed import report as mr
from compressjax.models import CNN
from compressjax.train import create_train_state, make_train_step
from compressjax.train.adabits_step import make_joint_step
from compressjax.train.fracbits_step import make_search_step
from compressjax.train.state import state_from_variables

QUICK = os.environ.get("COMPRESSJAX_NOTEBOOK_QUICK", "0") == "1"
FLOAT_EPOCHS, QAT_EPOCHS, SEARCH_EPOCHS = (3, 1, 2) if QUICK else (10, 4, 6)
BATCH = 64
OUT = tempfile.mkdtemp(prefix="compressjax_mixed_")
# Random keys from the "rbg" generator: on CPU they compile in a fraction of the time of the
# default threefry (seconds per model) and are just as deterministic.
jax.config.update("jax_default_prng_impl", "rbg")

# %% [markdown]
# ## A float CNN to start from

# %%
digits = load_dataset("digits")
x_test, y_test = jnp.asarray(digits.test.x), jnp.asarray(digits.test.y)
example = jnp.asarray(digits.train.x[:BATCH])
model = CNN(widths=(8, 16), hidden=32)


def new_state(variables, tx, seed=0):
  """A step-0 TrainState: ``variables`` (params + other collections), a fresh optimizer."""
  return state_from_variables(variables, tx, jax.random.PRNGKey(seed))


def run_epochs(step, state, epochs, seed=0):
  for epoch in range(epochs):
    for b in batches(digits.train, BATCH, seed=seed, epoch=epoch):
      state, metrics = step(state, b)
  return state, metrics


def accuracy(model, variables):
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x_test)
  return float(jnp.mean(jnp.argmax(logits, -1) == y_test))


tx = optax.adam(3e-3)
state = create_train_state(model, tx, example, jax.random.PRNGKey(0))
state, _ = run_epochs(make_train_step(model, tx), state, FLOAT_EPOCHS)
float_vars = state.variables
float_acc = accuracy(model, float_vars)
print(f"float CNN: test accuracy {float_acc:.3f}")
assert float_acc > 0.8

# %% [markdown]
# ## AdaBits: one model at 8, 4 and 2 bits
#
# `adabits` builds switchable SAT weight and PACT activation quantizers at every site but
# the first and last (8-bit) and a switchable BatchNorm through an extra interceptor: the
# model's code is untouched. `init_from_float` copies the float BatchNorm into every switch
# and sets each clip level from the float activations. `at_bits(model, b)` is the same
# model, with the same variables, running at `b` bits.
#
# Before training, even 8 bits is far from the float accuracy: SAT normalises the weights
# (DoReFa's `tanh`), which changes each conv's output scale, so the copied BatchNorm
# statistics no longer fit. Joint training (or `ab.recalibrate_bn`) repairs that.

# %%
BITS = (8, 4, 2)
joint = ab.adabits(model, BITS, example)
joint_vars = ab.init_from_float(joint, float_vars, example)
bn0 = joint_vars["params"]["bn0"]
print("bn0 switches:", sorted(bn0))
assert sorted(bn0) == [f"{k}_b{b}" for k in ("bias", "scale") for b in sorted(BITS)]


@jax.jit
def logits_at_every_bits(variables):
  return [ab.at_bits(joint, b).apply(variables, x_test, train=False) for b in BITS]


def accuracy_at_every_bits(variables):
  return {b: float(jnp.mean(jnp.argmax(z, -1) == y_test))
          for b, z in zip(BITS, logits_at_every_bits(variables))}


before = accuracy_at_every_bits(joint_vars)
# The summed loss has len(BITS) times the gradient of one model: scale the step down.
tx = optax.sgd(0.02 / len(BITS), momentum=0.9, nesterov=True)
state, metrics = run_epochs(make_joint_step(joint, tx), new_state(joint_vars, tx), QAT_EPOCHS)
after = accuracy_at_every_bits(state.variables)
print("bits  before  after joint training")
for b in BITS:
  print(f"{b:4d}  {before[b]:.3f}   {after[b]:.3f}")
assert all(np.isfinite(float(v)) for v in metrics.values())
assert after[8] > 0.8 and after[2] > 0.6 and all(after[b] > before[b] for b in BITS)

# %% [markdown]
# ## FracBits under a BitOPs budget
#
# The budget is what uniform 3-bit weights and activations (8-bit first and last layer)
# would cost: `cost.profile` gives each site's MACs, and BitOPs are
# `sum_l MACs_l * w_bits_l * a_bits_l`.

# %%
profile = cost.profile(model, example[:1])
paths = [s.name for s in discover(model, example) if s.has_weight]  # "conv1/kernel", ...
uniform3 = mr.BitAllocation.uniform(paths, 3)
budget = fb.Budget(target=uniform3.cost(profile, fb.Budget(target=1.0)))
for s in profile.sites:
  print(f"{s.path:14s} {s.kind:20s} MACs {s.macs:>8,.0f}  params {s.params:>6,}")
float_bitops = profile.bitops(32, 32)
print(f"budget: {budget.target:,.0f} BitOPs per example "
      f"({float_bitops / budget.target:.0f}x less than float)")

# %% [markdown]
# Every searchable operand gets a `lambda` parameter, starting at `target + 0.5 = 3.5`;
# `kernel_wise=True` gives weights one `lambda` per output channel. `fb.init_from_float`
# starts from the float weights, with clip levels from the float activations. The search
# step minimises `CE + kappa * |BitOPs(lambda) / target - 1|`; the lambdas get their own
# optimizer (Adam) through `optax.multi_transform`, the weights SGD.

# %%
fm = fb.fracbits(model, example, target_bits=3, min_bits=2, max_bits=6, kernel_wise=True)
variables = fb.init_from_float(fm, float_vars, example)
# Transform state lives beside the user's params: params["compressjax"][<site>][operand].
print({operand: st["lambda"].shape
       for operand, st in variables["params"]["compressjax"]["conv1"]["kernel"].items()})

is_lambda = lambda params: jax.tree_util.tree_map_with_path(
    lambda path, _: "bits" if str(path[-1].key).endswith("lambda") else "rest", params)
tx = optax.multi_transform({"rest": optax.sgd(0.02, momentum=0.9), "bits": optax.adam(0.05)},
                           is_lambda)
start_cost = float(fb.search_cost(fm, variables["params"], profile, budget))
step = make_search_step(fm, tx, profile, budget, variables["params"])
state, metrics = run_epochs(step, new_state(variables, tx), SEARCH_EPOCHS)
w_bits, a_bits = fb.site_bits(fm, state.params, profile)
print(f"cost/target: {start_cost / budget.target:.3f} at the start -> "
      f"{float(metrics['cost']) / budget.target:.3f} after the search")
for p in paths[1:-1]:
  w = np.asarray(w_bits[p])
  print(f"  {p:14s} weight bits per channel: mean {w.mean():.2f} (min {w.min():.2f}, max "
        f"{w.max():.2f}); input bits {float(a_bits[p]):.2f}")
assert abs(float(metrics["cost"]) / budget.target - 1) < abs(start_cost / budget.target - 1)

# %% [markdown]
# ## Harden to integers, report, reuse as rules
#
# `harden` rounds `lambda + offset` with the offset bisected so the integer allocation's
# cost is within 1% of the budget (at or under it when it can be). The allocation is a
# small JSON file; `rules_from_json` turns it into fixed-bit rules, and `fb.transfer`
# carries the search's weights, BatchNorm and clip levels over for fine-tuning at those
# integer bits.

# %%
alloc = fb.harden(fm, state.params, profile, budget)
print(mr.table({"uniform W3A3": uniform3, "FracBits": alloc}, profile, budget))
assert abs(alloc.meta["relative_error"]) <= 0.01
assert alloc.w_bits[paths[0]] == 8 and alloc.a_bits[paths[0]] is None  # edges pinned

path = os.path.join(OUT, "fracbits_alloc.json")
alloc.save(path)
assert mr.BitAllocation.load(path) == alloc
print("layers[2] of the JSON:", alloc.to_dict()["layers"][2])
fixed = compress(model, mr.rules_from_json(path))
fixed_vars = fb.transfer(state.variables, fb.init_from_float(fixed, float_vars, example))
tx = optax.sgd(0.01, momentum=0.9)
tuned, _ = run_epochs(make_train_step(fixed, tx), new_state(fixed_vars, tx), QAT_EPOCHS)
hard_acc, tuned_acc = accuracy(fixed, fixed_vars), accuracy(fixed, tuned.variables)
print(f"hardened allocation: accuracy {hard_acc:.3f} with the search's weights, "
      f"{tuned_acc:.3f} after fine-tuning at the integer bits (float {float_acc:.3f})")
assert hard_acc > 0.5 and tuned_acc > 0.8

png = os.path.join(OUT, "bits_per_layer.png")
mr.plot({"uniform W3A3": uniform3, "FracBits": alloc}, profile, png, title="bits per layer")
display(Image(filename=png))
