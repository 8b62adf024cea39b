import jax
import numpy as np
import optax
import pytest

from compressjax.distill.pix2pix import (FeatureDistill, evaluate_generator, generator_variables,
                                         init_gan_state, make_gan_step, pix2pix_init)
from compressjax.models.discriminator import PatchDiscriminator
from compressjax.models.generator import Generator

BRANCHES = (("conv", 3), ("dw", 3))
TEACHER = Generator(down_widths=(4, 8), block_widths=((8, 8),) * 2, up_widths=(4,),
                    branches=BRANCHES)
STUDENT = TEACHER.clone(down_widths=(2, 4), block_widths=((3, 0), (0, 2)), up_widths=(2,))
DISC = PatchDiscriminator(ndf=4, n_layers=1)
RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
Y = np.tanh(np.concatenate([X, -X, 0.5 * X], -1))


def test_pix2pix_init_follows_cat():
  p = pix2pix_init(TEACHER.clone(block_widths=((64, 64),) * 2), 3, X)["params"]
  leaves = jax.tree_util.tree_leaves_with_path(p)
  pick = lambda name: np.concatenate([np.ravel(v) for k, v in leaves
                                      if jax.tree_util.keystr(k).endswith(f"'{name}']")])
  kernels, scales, biases = pick("kernel"), pick("scale"), pick("bias")
  assert abs(kernels.std() - 0.02) < 0.001 and abs(kernels.mean()) < 0.001
  assert abs(scales.mean() - 1.0) < 0.005 and 0.015 < scales.std() < 0.025
  np.testing.assert_array_equal(biases, 0.0)
  again = pix2pix_init(TEACHER.clone(block_widths=((64, 64),) * 2), 3, X)["params"]
  jax.tree.map(np.testing.assert_array_equal, p, again)


@pytest.mark.parametrize("kind", ["ka", "mse"])
def test_distilled_gan_step_trains_student_and_leaves_teacher(kind):
  t_vars = pix2pix_init(TEACHER, 0, X)
  distill = FeatureDistill(TEACHER, t_vars, STUDENT.block_paths, TEACHER.block_paths, kind,
                           weight=1.0)
  g_tx, d_tx = optax.adam(1e-3, b1=0.5), optax.adam(1e-3, b1=0.5)
  state = init_gan_state(1, STUDENT, DISC, g_tx, d_tx, X, Y, distill)
  if kind == "mse":  # 1x1 adaptors from the student's 4 to the teacher's 8 stream channels
    assert {k: v["kernel"].shape for k, v in state.g_params["adaptors"].items()} == {
        "block_0": (4, 8), "block_1": (4, 8)}
  else:
    assert state.g_params["adaptors"] == {}
  step = make_gan_step(STUDENT, DISC, g_tx, d_tx, distill=distill)
  before = jax.tree.map(np.array, t_vars)
  losses = []
  for _ in range(6):
    state, m = step(state, X, Y)
    losses.append(float(m["l1"]))
  assert set(m) == {"distill", "g_gan", "l1", "gan_weight", "g_loss", "d_loss"}
  assert all(np.isfinite(float(v)) for v in m.values())
  if kind == "ka":
    assert -2.0 <= float(m["distill"]) < 0.0  # -sum of 2 alignments in [0, 1]
  assert losses[-1] < losses[0]
  jax.tree.map(np.testing.assert_array_equal, before, t_vars)
  assert not np.allclose(state.g_state["batch_stats"]["down_0_norm"]["mean"], 0.0)
  scores = evaluate_generator(STUDENT, generator_variables(state), np.repeat(X, 2, 1).repeat(2, 2),
                              np.repeat(Y, 2, 1).repeat(2, 2))
  assert set(scores) == {"psnr", "ssim"} and scores["psnr"] > 0


def test_bad_distill_configs_are_refused():
  with pytest.raises(ValueError, match="kind"):
    FeatureDistill(TEACHER, {}, ("block_0",), ("block_0",), kind="l2")
  with pytest.raises(ValueError, match="pair up"):
    FeatureDistill(TEACHER, {}, ("block_0", "block_1"), ("block_0",))


def test_gan_weight_schedule_turns_the_adversarial_term_on_after_a_warm_up():
  g_tx, d_tx = optax.adam(1e-3, b1=0.5), optax.adam(1e-3, b1=0.5)
  warm_up = lambda step: (step >= 2).astype(np.float32)  # L1 alone for 2 steps
  step = make_gan_step(STUDENT, DISC, g_tx, d_tx, lambda_recon=10.0, gan_weight=warm_up)
  state = init_gan_state(1, STUDENT, DISC, g_tx, d_tx, X, Y)
  for i in range(3):
    state, m = step(state, X, Y)
    assert float(m["gan_weight"]) == (i >= 2)
    expected = 10.0 * m["l1"] + (m["g_gan"] if i >= 2 else 0.0)
    np.testing.assert_allclose(m["g_loss"], expected, rtol=1e-6)
  l1_only = make_gan_step(STUDENT, DISC, g_tx, d_tx, lambda_recon=10.0, gan_weight=0.0)
  state, m = l1_only(init_gan_state(1, STUDENT, DISC, g_tx, d_tx, X, Y), X, Y)
  np.testing.assert_allclose(m["g_loss"], 10.0 * m["l1"], rtol=1e-6)
  assert float(m["d_loss"]) > 0  # the discriminator still trains and reports
