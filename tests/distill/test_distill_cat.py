import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compressjax.cost import profile
from compressjax.distill.cat import cat_prune, generator_macs, prunable_scales, prune_at
from compressjax.distill.pix2pix import pix2pix_init
from compressjax.models.generator import Generator

BRANCHES = (("conv", 1), ("conv", 3), ("dw", 3), ("dw", 5))
TEACHER = Generator(out_channels=3, down_widths=(6, 8, 12), block_widths=((12, 12, 12, 12),) * 2,
                    up_widths=(8, 6), branches=BRANCHES)
X = jnp.ones((2, 16, 16, 1))
VARS = pix2pix_init(TEACHER, 0, X)


def hand_macs(g: Generator, h: int, w: int, in_c: int = 1) -> int:
  """Per-example MACs counted by hand (conv: out pixels * k^2 * in/groups * out)."""
  macs = h * w * 49 * in_c * g.down_widths[0]
  for i in range(1, len(g.down_widths)):
    macs += (h >> i) * (w >> i) * 9 * g.down_widths[i - 1] * g.down_widths[i]
  n = len(g.down_widths) - 1
  hw, c = (h >> n) * (w >> n), g.down_widths[-1]
  for widths in g.block_widths:
    for (kind, k), bw in zip(g.branches, widths):
      if bw and kind == "conv":
        macs += hw * (k * k * c * bw + bw * c)
      elif bw:
        macs += hw * (c * bw + k * k * bw + bw * c)
  c_in = c
  for i, cw in enumerate(g.up_widths):  # ConvTranspose: input pixels * 9 * in * out
    macs += (h >> (n - i)) * (w >> (n - i)) * 9 * c_in * cw
    c_in = cw
  return macs + h * w * 49 * c_in * g.out_channels


def _with_scales(variables, fn):
  """Variables whose prunable norm scales are set by fn(path, size)."""
  p = jax.tree.map(lambda a: a, dict(variables["params"]))
  for path in prunable_scales(TEACHER, variables):
    node = p
    parts = path.split("/")
    for name in parts[:-1]:
      node = node[name]
    norm = node[parts[-1]]
    node[parts[-1]] = {**norm, "scale": jnp.asarray(fn(path, norm["scale"].size))}
  return {**variables, "params": p}


def test_generator_macs_match_a_hand_count():
  assert generator_macs(TEACHER, X) == hand_macs(TEACHER, 16, 16)
  thin = TEACHER.clone(down_widths=(3, 5, 7), block_widths=((0, 2, 0, 5), (0, 0, 0, 0)),
                       up_widths=(4, 2))
  assert generator_macs(thin, X) == hand_macs(thin, 16, 16)


def test_bisection_lands_at_or_under_target_and_is_the_widest_such_network():
  full = generator_macs(TEACHER, X)
  res = cat_prune(TEACHER, VARS, X, full / 4, min_width=2)
  assert res.macs <= res.target_macs == full / 4
  assert res.original_macs == full
  # the shrunk generator runs and the cost model agrees with the reported and hand counts
  v = pix2pix_init(res.generator, 1, X)
  assert jax.jit(res.generator.apply)(v, X).shape == (2, 16, 16, 3)
  assert profile(res.generator, X).macs == res.macs == hand_macs(res.generator, 16, 16)
  # one more channel (the next lower threshold) would exceed the target
  scales = prunable_scales(TEACHER, VARS)
  below = max(s for v_ in scales.values() for s in v_ if s < res.threshold)
  assert generator_macs(prune_at(TEACHER, scales, below, 2)[0], X) > res.target_macs
  assert min(res.generator.down_widths + res.generator.up_widths) >= 2
  loose = cat_prune(TEACHER, VARS, X, full + 1)
  assert loose.generator == TEACHER


def test_branches_with_small_gammas_are_removed_and_min_width_is_kept():
  def scales(path, n):
    if path.startswith("block_1"):  # the whole second block is weak
      return np.full(n, 1e-3)
    if path == "block_0/branch_2/norm1":
      return np.full(n, 2e-3)
    if path.startswith(("down", "up")):
      return np.full(n, 1e-3)  # below threshold: only min_width survive
    return np.linspace(0.5, 1.5, n)
  v = _with_scales(VARS, scales)
  thin = TEACHER.clone(down_widths=(3, 3, 3), block_widths=((12,) * 4, (0,) * 4), up_widths=(3, 3))
  # one MAC less than keeping every channel above 1e-3 forces the 2e-3 branch out as well
  res = cat_prune(TEACHER, v, X, generator_macs(thin, X) - 1, min_width=3)
  g = res.generator
  assert g == thin.clone(block_widths=((12, 12, 0, 12), (0,) * 4))
  assert res.threshold == pytest.approx(2e-3)
  params = jax.eval_shape(g.init, jax.random.key(0), X)["params"]
  assert "branch_2" not in params["block_0"] and "block_1" not in params
  assert res.kept["block_0/branch_0/norm1"].size == g.block_widths[0][0]


def test_impossible_targets_and_bad_params_are_refused():
  with pytest.raises(ValueError, match="below the MACs of the smallest generator"):
    cat_prune(TEACHER, VARS, X, 1000, min_width=4)
  with pytest.raises(ValueError, match="min_width"):
    cat_prune(TEACHER, VARS, X, 1e9, min_width=0)
  other = TEACHER.clone(block_widths=((12, 12, 12, 12),) * 3)
  with pytest.raises(ValueError, match="missing"):
    cat_prune(other, VARS, X, 1e9)


def test_experiment_gan_schedule_and_affine_map_reference():
  import dataclasses  # pylint: disable=g-import-not-at-top
  from compressjax.data.image_pairs import heldout_pairs  # pylint: disable=g-import-not-at-top
  from experiments import cat as exp  # pylint: disable=g-import-not-at-top

  cfg = dataclasses.replace(exp.QUICK, gan_weight=0.5, gan_warmup=3, short_side=32)
  sched = exp.gan_schedule(cfg)
  assert [float(sched(jnp.asarray(s))) for s in (0, 2, 3, 9)] == [0.0, 0.0, 0.5, 0.5]
  assert exp.gan_schedule(dataclasses.replace(cfg, gan_warmup=0)) == 0.5
  grey = dataclasses.replace(cfg, task="gray2rgb")
  test = heldout_pairs(grey.task, short_side=grey.short_side)
  ref = exp.affine_map_baseline(grey, test)
  assert ref["psnr"] > exp.input_scores(test)["psnr"] + 1.0  # the training colour cast carries over
  noisy = heldout_pairs("denoise", short_side=cfg.short_side)  # 3-channel inputs: a 4x3 map
  ref, base = exp.affine_map_baseline(cfg, noisy), exp.input_scores(noisy)
  assert ref["psnr"] > base["psnr"] + 0.5  # mixing the channels averages some noise away
  assert "1.0 * hinge GAN after 5 steps of L1 alone" in exp.training(exp.QUICK)
  assert exp.training(exp.FULL).endswith("generator loss 100.0 * L1 (no GAN term)")


def test_experiment_parts_merge_into_one_table(tmp_path):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from experiments import cat as exp  # pylint: disable=g-import-not-at-top

  def run_record(seed):
    return {"seed": seed, "psnr": 20.0 + seed, "ssim": 0.5, "train_metrics": {}, "time_s": 1.0}

  shared = {"input": {"psnr": 16.0, "ssim": 0.4}, "teacher": {"psnr": 19.0}}
  parts = [((4,), (0,)), ((4,), (1,)), ((8,), (0,))]
  for i, (ratios, seeds) in enumerate(parts):
    cfg = dataclasses.replace(exp.QUICK, ratios=ratios, seeds=seeds)
    records = {**shared, f"1/{ratios[0]}": {"student": {}, "runs": {
        "ka": [run_record(seeds[0])]}}}
    images = {"input": np.zeros((1, 2, 2, 1)), f"1/{ratios[0]} ka": np.full((1, 2, 2, 3), i)}
    (tmp_path / str(i)).mkdir()
    exp.save_part(str(tmp_path / str(i)), cfg, records, images)
  cfg, records, images = exp.merge_parts([str(tmp_path / str(i)) for i in range(3)])
  assert cfg.ratios == (4, 8) and cfg.seeds == (0, 1) and cfg.branches == exp.QUICK.branches
  assert [r["seed"] for r in records["1/4"]["runs"]["ka"]] == [0, 1]
  assert len(records["1/8"]["runs"]["ka"]) == 1 and records["teacher"] == {"psnr": 19.0}
  assert sorted(images) == ["1/4 ka", "1/8 ka", "input"] and images["1/4 ka"].max() == 0
  # a part saved mid-run (a progress folder): its config names ratios and seeds not yet run
  (tmp_path / "mid").mkdir()
  exp.save_part(str(tmp_path / "mid"), dataclasses.replace(exp.QUICK, ratios=(4, 8), seeds=(0, 1)),
                {**shared, "1/4": {"student": {"macs": 1, "params": 1, "down_widths": [4],
                                               "block_widths": [[4]], "up_widths": [4]},
                                   "runs": {"ka": [run_record(0)]}},
                 "1/8": {"runs": {}}}, {})
  cfg, records, _ = exp.merge_parts([str(tmp_path / "mid")])
  assert cfg.ratios == (4,) and cfg.seeds == (0,) and "1/8" not in records
  affine = {**shared["input"], "params": 12}
  assert "1/4: down" in exp.summarize(cfg, {**records, "affine_map": affine,
                                           "input_train_images": shared["input"],
                                           "teacher": {**shared["teacher"], "macs": 1,
                                                       "params": 1, "ssim": 0.5, "curve": []}})
  exp.save_part(str(tmp_path / "0"), dataclasses.replace(exp.QUICK, steps=11), shared, {})
  with pytest.raises(ValueError, match="other settings"):
    exp.merge_parts([str(tmp_path / "1"), str(tmp_path / "0")])
