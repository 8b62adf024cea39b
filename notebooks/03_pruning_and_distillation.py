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
# # Pruning and distillation
#
# * **Unstructured and N:M pruning are optax transforms.** Chain one after any optimizer:
#   it keeps the masks in its state and keeps pruned weights at *exactly* zero, so training
#   loops, checkpoints and sharding need nothing special.
# * **Channel pruning ends in a genuinely smaller model.** Network Slimming pushes BatchNorm
#   scales towards zero; `shrink` then rebuilds the same model class with fewer channels.
# * **Distillation** is a loss over the outputs (and tapped features) of a frozen teacher and
#   the student, both unmodified Flax models.
# * **CAT** prunes an image-to-image generator to a MACs budget in one step and trains the
#   thinner student with kernel-alignment (KA) distillation from the teacher's features.
#
# Everything runs on the offline digits dataset and scikit-image's bundled pictures, at tiny
# sizes. `QUICK` (set by the test) shortens the training.

# %%
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compressjax import cost, prune
from compressjax.data import ArraySplit, batches, load_dataset
from compressjax.data.image_pairs import heldout_pairs, pair_batches, train_patches
from compressjax.distill import cat, pix2pix
from compressjax.distill.objective import hinton_objective
from compressjax.models import CNN
from compressjax.models.discriminator import PatchDiscriminator
from compressjax.models.generator import Generator
from compressjax.train import make_train_step
from compressjax.train.distill_step import make_distill_step
from compressjax.train.state import state_from_variables

QUICK = os.environ.get("COMPRESSJAX_NOTEBOOK_QUICK", "0") == "1"
EPOCHS = 2 if QUICK else 6  # per training phase
GAN_STEPS = 8 if QUICK else 200
BATCH = 64
# Random keys from the "rbg" generator: on CPU they compile in a fraction of the time of the
# default threefry (seconds per model) and are just as deterministic.
jax.config.update("jax_default_prng_impl", "rbg")

# %% [markdown]
# ## A wider float CNN: the model we prune and the teacher we distil from

# %%
digits = load_dataset("digits")
x_test, y_test = jnp.asarray(digits.test.x), jnp.asarray(digits.test.y)
example = jnp.asarray(digits.train.x[:BATCH])


def init(model, seed=0):
  return jax.jit(model.init)(jax.random.key(seed), example)


def new_state(variables, tx, seed=0):
  """A step-0 TrainState: ``variables`` (params + other collections), a fresh optimizer."""
  return state_from_variables(variables, tx, jax.random.PRNGKey(seed))


def run_epochs(step, state, epochs, seed=0, data=digits.train):
  for epoch in range(epochs):
    for b in batches(data, BATCH, seed=seed, epoch=epoch):
      state, _ = step(state, b)
  return state


@functools.cache  # one compilation per model, however often it is evaluated
def eval_logits(model):
  return jax.jit(lambda v: model.apply(v, x_test, train=False))


def accuracy(model, variables):
  return float(jnp.mean(jnp.argmax(eval_logits(model)(variables), -1) == y_test))


teacher = CNN(widths=(16, 32), hidden=64)
tx = optax.adam(3e-3)
state = run_epochs(make_train_step(teacher, tx), new_state(init(teacher), tx), EPOCHS + 1)
teacher_vars = state.variables
teacher_acc = accuracy(teacher, teacher_vars)
print(f"float CNN {teacher.widths}/{teacher.hidden}: test accuracy {teacher_acc:.3f}")
assert teacher_acc > 0.85

# %% [markdown]
# ## Gradual magnitude pruning (Zhu & Gupta) as an optax transform
#
# Sparsity rises from 0 to 80% along a cubic schedule while the model fine-tunes.
# The first and last layer stay dense; `call_order` tells the pruner which they are.

# %%
steps = EPOCHS * (len(digits.train) // BATCH)
order = prune.call_order(teacher, teacher_vars, example)
pruner = prune.magnitude(0.8, prune.polynomial(0, int(0.7 * steps), frequency=5), order=order)
tx = optax.chain(optax.adam(1e-3), pruner)
state = run_epochs(make_train_step(teacher, tx), new_state(teacher_vars, tx), EPOCHS)
masks = prune.get_masks(state.opt_state)
print(prune.format_report(prune.sparsity_report(state.params, masks)))
sparse_acc = accuracy(teacher, state.variables)
print(f"80% sparse body: accuracy {sparse_acc:.3f} (dense {teacher_acc:.3f})")

kernel, mask = np.asarray(state.params["hidden"]["kernel"]), np.asarray(masks["hidden"]["kernel"])
assert np.all(kernel[~mask] == 0.0) and abs((~mask).mean() - 0.8) < 0.01
assert masks["conv0"]["kernel"] is None and masks["head"]["kernel"] is None  # edges dense
assert sparse_acc > 0.8

# %% [markdown]
# ## N:M sparsity (2:4)
#
# In every group of 4 consecutive weights along the input axis, 2 survive: the pattern
# sparse tensor cores accelerate. `prune.nm` is a transform like the one above (chain it
# after the optimizer to fine-tune under the pattern); `prune_once` applies any pruner once,
# without training. `compress_nm` stores the kept values plus a 2-bit index each.

# %%
nm_params, nm_masks = prune.prune_once(prune.nm(2, 4, order=order), teacher_vars["params"])
w = nm_params["hidden"]["kernel"]
groups = np.asarray(w != 0).T.reshape(-1, 4)  # groups of 4 along the input axis
packed = prune.compress_nm(w, 2, 4, nm_masks["hidden"]["kernel"])
nm_acc = accuracy(teacher, {**teacher_vars, "params": nm_params})
print(f"one-shot 2:4, no fine-tuning: accuracy {nm_acc:.3f} (dense {teacher_acc:.3f}); "
      f"hidden kernel {packed.dense_nbytes:,} B dense -> {packed.nbytes:,} B as N:M")
assert np.all(groups.sum(axis=1) == 2)
np.testing.assert_array_equal(prune.decompress_nm(packed), w)

# %% [markdown]
# ## Network Slimming and `shrink`
#
# Train with an L1 penalty on BatchNorm scales (`slimming_penalty`, chained *before* the
# optimizer: plain SGD, as in the paper, so the penalty is not rescaled away), drop the 40%
# of channels with the smallest |gamma| under one global threshold (every layer keeps at
# least `min_channels`), and `shrink` to a CNN with fewer channels: parameters and MACs
# really go down. The shrunk model computes exactly what the channel-masked model computes;
# after so short a sparsity training the gammas have barely separated, so the pruned model
# needs the usual fine-tuning.

# %%
tx = optax.chain(prune.slimming_penalty(1e-3), optax.sgd(0.05, momentum=0.9))
state = run_epochs(make_train_step(teacher, tx), new_state(teacher_vars, tx), EPOCHS)
slim_vars = state.variables
keep = prune.slimming_keep(teacher, slim_vars, fraction=0.4, min_channels=4)
thin, thin_vars = prune.shrink(teacher, slim_vars, keep)

one = example[:1]
before, after = cost.profile(teacher, one), cost.profile(thin, one)
masked_acc = accuracy(teacher, prune.mask_channels(teacher, slim_vars, keep))
thin_acc = accuracy(thin, thin_vars)
tx = optax.adam(1e-3)
tuned = run_epochs(make_train_step(thin, tx), new_state(thin_vars, tx), 1)
tuned_acc = accuracy(thin, tuned.variables)
print(f"widths {teacher.widths} -> {thin.widths}")
print(f"params {before.total_params:,} -> {after.total_params:,}; "
      f"MACs {before.macs:,.0f} -> {after.macs:,.0f}")
print(f"accuracy {accuracy(teacher, slim_vars):.3f} before pruning, {thin_acc:.3f} shrunk "
      f"(masked: {masked_acc:.3f}), {tuned_acc:.3f} after one epoch of fine-tuning")
assert sum(thin.widths) < 0.7 * sum(teacher.widths) and min(thin.widths) >= 4
assert after.total_params < before.total_params and after.macs < 0.7 * before.macs
assert abs(thin_acc - masked_acc) < 0.01  # the shrunk model computes the masked function
assert tuned_acc > 0.8

# %% [markdown]
# ## Knowledge distillation from the wider teacher
#
# A 2x narrower student learns from the teacher's tempered soft targets plus the labels
# (Hinton et al.: `(1 - a) CE + a T^2 KL`). Here only 10% of the training images keep their
# label (label -1 marks the others): unlabelled images still get the teacher's soft
# targets, while the student trained alone sees only the labelled ones (for as many steps).
# `make_distill_step` runs the frozen teacher in eval mode beside the student; it also
# accepts quantized or pruned students and feature terms on tapped layers.

# %%
labelled = np.random.default_rng(0).random(len(digits.train)) < 0.1
few_labels = ArraySplit(digits.train.x, np.where(labelled, digits.train.y, -1).astype(np.int32))
only_labelled = ArraySplit(digits.train.x[labelled], digits.train.y[labelled])

student = CNN(widths=(8, 16), hidden=32)
tx = optax.adam(1e-2)
student_init = init(student, seed=1)
kd_step = make_distill_step(student, tx, teacher, teacher_vars,
                            hinton_objective(temperature=4.0, alpha=0.9))
kd_state = run_epochs(kd_step, new_state(student_init, tx), EPOCHS, data=few_labels)
alone = run_epochs(make_train_step(student, tx), new_state(student_init, tx),
                   EPOCHS * len(few_labels) // len(only_labelled), data=only_labelled)
kd_acc, alone_acc = accuracy(student, kd_state.variables), accuracy(student, alone.variables)
print(f"student {student.widths}/{student.hidden} with {labelled.sum()} labels: {kd_acc:.3f} "
      f"distilled, {alone_acc:.3f} trained alone (teacher {teacher_acc:.3f})")
assert kd_acc > 0.8

# %% [markdown]
# ## CAT: prune an image-to-image generator, distil with KA
#
# A tiny pix2pix-style generator with inception-residual blocks learns grey -> RGB on
# patches of scikit-image's sample pictures (hinge GAN + L1, against a PatchGAN). CAT pools
# the |gamma| of its prunable norms and bisects one threshold with the cost model until
# the thinner generator's MACs fit the target (a third here). The student is re-initialised
# and trained with the same losses plus `-sum KA(student block, teacher block)`.

# %%
data = train_patches("gray2rgb", 64, patch_size=16, short_side=48)
test = heldout_pairs("gray2rgb", short_side=32)
x0, y0 = data.inputs[:8], data.targets[:8]
branches = (("conv", 3), ("dw", 3))
g_teacher = Generator(down_widths=(8, 16), block_widths=((16, 16),) * 2, up_widths=(8,),
                      branches=branches)
disc = PatchDiscriminator(ndf=4, n_layers=1)
g_tx, d_tx = optax.adam(2e-3, b1=0.5), optax.adam(2e-3, b1=0.5)


def train_gan(step, state, seed=0):
  n, epoch = 0, 0
  while n < GAN_STEPS:
    for x, y in pair_batches(data, 8, seed=seed, epoch=epoch):
      state, metrics = step(state, x, y)
      n += 1
      if n == GAN_STEPS:
        break
    epoch += 1
  return state, {k: float(v) for k, v in metrics.items()}


state, _ = train_gan(pix2pix.make_gan_step(g_teacher, disc, g_tx, d_tx),
                     pix2pix.init_gan_state(0, g_teacher, disc, g_tx, d_tx, x0, y0))
g_teacher_vars = pix2pix.generator_variables(state)

full_macs = cat.generator_macs(g_teacher, x0)
pruned = cat.cat_prune(g_teacher, g_teacher_vars, x0, full_macs / 3, min_width=2)
g_student = pruned.generator
for name, g in (("teacher", g_teacher), ("student", g_student)):
  print(f"{name}: down {g.down_widths} blocks {g.block_widths} up {g.up_widths}")
print(f"MACs per 16x16 patch {full_macs:,.0f} -> {pruned.macs:,.0f} "
      f"(target {pruned.target_macs:,.0f})")
assert pruned.macs <= full_macs / 3

distill = pix2pix.FeatureDistill(g_teacher, g_teacher_vars, g_student.block_paths,
                                 g_teacher.block_paths, kind="ka", weight=1.0)
state, metrics = train_gan(pix2pix.make_gan_step(g_student, disc, g_tx, d_tx, distill=distill),
                           pix2pix.init_gan_state(1, g_student, disc, g_tx, d_tx, x0, y0, distill))
print("last student step:", {k: round(v, 3) for k, v in metrics.items()})
scores = {name: pix2pix.evaluate_generator(g, v, test.inputs, test.targets)
          for name, g, v in [("teacher", g_teacher, g_teacher_vars),
                             ("CAT student", g_student, pix2pix.generator_variables(state))]}
for name, s in scores.items():
  print(f"{name:12s} PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.3f} on held-out images")
assert -len(g_student.block_paths) <= metrics["distill"] < 0  # -sum of alignments in [0, 1]
assert all(np.isfinite(s["psnr"]) for s in scores.values())
