"""CAT on a small image-to-image task: prune a trained inception generator to 1/4 and 1/8 of its
MACs and train the pruned student from scratch, with MSE feature distillation, or with KA.

Task: grey -> RGB (colourisation) on 32x32 patches of six scikit-image sample images; PSNR and
SSIM on the centre 128x128 squares of two held-out images (chelsea, coffee). The teacher is a
pix2pix-style generator with 4 inception-residual blocks of 6 branches (conv/depthwise x kernel
1/3/5), BatchNorm, trained with hinge GAN + 100 * L1 against a conditional PatchGAN.
CAT: one global |gamma| threshold, bisected with the cost model until the student's MACs are
at or under the target; min width 4 for down/up layers (the paper's 16 is larger than this
tiny teacher's stem); students re-initialised (N(0, 0.02), gamma N(1, 0.02)) and trained for as
many steps as the teacher, with the same losses plus, for the distilled ones, weight *
(-sum KA) or weight * sum MSE(1x1 adaptor(student), teacher) on the 4 block outputs.
One teacher (seed 0); every student configuration runs with each seed (student and
discriminator init, batch order). MACs are per 32x32 example.

  python -m experiments.cat            # results/cat.{json,md,png}
  python -m experiments.cat --quick    # CI-sized: results/cat_quick.*
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
import optax

from compressjax.data.image_pairs import ImagePairs, heldout_pairs, pair_batches, train_patches
from compressjax.distill.cat import cat_prune, generator_macs
from compressjax.distill.image_metrics import psnr, ssim
from compressjax.distill.pix2pix import (FeatureDistill, GanState, generate, generator_variables,
                                         image_scores, init_gan_state, make_gan_step)
from compressjax.models.discriminator import PatchDiscriminator
from compressjax.models.generator import DEFAULT_BRANCHES, Branch, Generator, uniform_generator
from compressjax.train import param_count
from experiments import _report

METHODS = ("scratch", "mse", "ka")


@dataclasses.dataclass(frozen=True)
class Config:
  task: str = "gray2rgb"
  seeds: tuple[int, ...] = (0, 1)
  num_patches: int = 2048
  patch_size: int = 32
  short_side: int = 128
  ngf: int = 8
  n_blocks: int = 4
  branch_width: int = 16
  branches: tuple[Branch, ...] = DEFAULT_BRANCHES
  ndf: int = 8
  steps: int = 600
  batch_size: int = 16
  lr: float = 1e-3
  lambda_recon: float = 100.0
  ratios: tuple[int, ...] = (4, 8)
  min_width: int = 4
  distill_weight: float = 1.0


FULL = Config()
# CI-sized: a 2-branch generator compiles much faster than the 6-branch one.
QUICK = Config(seeds=(0,), num_patches=128, ngf=4, branch_width=4,
               branches=(("conv", 3), ("dw", 3)), steps=10, ratios=(2,), min_width=2)


def train(cfg: Config, step, state: GanState, data: ImagePairs, seed: int) -> tuple[GanState, dict]:
  """``cfg.steps`` steps over shuffled epochs of ``data``; returns the state and last metrics."""
  n, epoch, metrics = 0, 0, {}
  while n < cfg.steps:
    for x, y in pair_batches(data, cfg.batch_size, seed=seed, epoch=epoch):
      state, metrics = step(state, x, y)
      n += 1
      if n == cfg.steps:
        break
    epoch += 1
  return state, {k: float(v) for k, v in metrics.items()}


def describe(g: Generator, variables: Any, example: np.ndarray) -> dict[str, Any]:
  return {"macs": generator_macs(g, example), "params": param_count(variables["params"]),
          "down_widths": g.down_widths, "block_widths": g.block_widths, "up_widths": g.up_widths}


def run(cfg: Config, teacher_only: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Trains the teacher and (unless ``teacher_only``) every student; returns the records and
  the seed-0 outputs on the held-out images."""
  data = train_patches(cfg.task, cfg.num_patches, cfg.patch_size, seed=0,
                       short_side=cfg.short_side)
  test = heldout_pairs(cfg.task, short_side=cfg.short_side)
  x0, y0 = data.inputs[:cfg.batch_size], data.targets[:cfg.batch_size]
  disc = PatchDiscriminator(ndf=cfg.ndf, n_layers=2)
  g_tx, d_tx = optax.adam(cfg.lr, b1=0.5), optax.adam(cfg.lr, b1=0.5)
  images = {"input": test.inputs, "target": test.targets}
  grey = np.repeat(test.inputs, 3, axis=-1)
  records: dict[str, Any] = {"grey_input": {
      "psnr": float(np.mean(psnr(grey, test.targets))),
      "ssim": float(np.mean(ssim(grey, test.targets)))}}

  teacher = uniform_generator(cfg.ngf, cfg.n_blocks, cfg.branch_width, branches=cfg.branches)
  t0 = time.time()
  state, last = train(cfg, make_gan_step(teacher, disc, g_tx, d_tx, cfg.lambda_recon),
                      init_gan_state(0, teacher, disc, g_tx, d_tx, x0, y0), data, seed=0)
  t_vars = generator_variables(state)
  images["teacher"] = generate(teacher, t_vars, test.inputs)
  records["teacher"] = {**describe(teacher, t_vars, x0),
                        **image_scores(images["teacher"], test.targets), "train_metrics": last,
                        "time_s": time.time() - t0}
  print(f"teacher: {records['teacher']}", flush=True)

  if teacher_only:
    return records, images
  for ratio in cfg.ratios:
    pruned = cat_prune(teacher, t_vars, x0, records["teacher"]["macs"] / ratio, cfg.min_width)
    student = pruned.generator
    rec = records[f"1/{ratio}"] = {"target_macs": pruned.target_macs,
                                   "threshold": pruned.threshold, "runs": {}}
    for method in METHODS:
      distill = None if method == "scratch" else FeatureDistill(
          teacher, t_vars, student.block_paths, teacher.block_paths, method, cfg.distill_weight)
      step = make_gan_step(student, disc, g_tx, d_tx, cfg.lambda_recon, distill)
      for seed in cfg.seeds:
        t0 = time.time()
        init = init_gan_state(seed + 1, student, disc, g_tx, d_tx, x0, y0, distill)
        state, last = train(cfg, step, init, data, seed)
        s_vars = generator_variables(state)
        out = generate(student, s_vars, test.inputs)
        rec.setdefault("student", describe(student, s_vars, x0))
        rec["runs"].setdefault(method, []).append({
            "seed": seed, **image_scores(out, test.targets), "train_metrics": last,
            "time_s": time.time() - t0})
        if seed == cfg.seeds[0]:
          images[f"1/{ratio} {method}"] = out
        print(f"1/{ratio} {method} seed {seed}: {rec['runs'][method][-1]}", flush=True)
  return records, images


def summarize(cfg: Config, records: dict[str, Any]) -> str:
  """The Markdown table: MACs, params, PSNR and SSIM (mean ± sd over seeds)."""
  t = records["teacher"]

  def fmt(vals: list[float], digits: int) -> str:
    m, sd = _report.mean_sd(vals)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"

  g = records["grey_input"]
  rows = [["grey input (no model)", "-", "-", "-", f"{g['psnr']:.2f}", f"{g['ssim']:.4f}"],
          ["teacher", "-", f"{t['macs']:,.0f}", f"{t['params']:,}", f"{t['psnr']:.2f}",
           f"{t['ssim']:.4f}"]]
  for ratio in cfg.ratios:
    rec = records[f"1/{ratio}"]
    for method, runs in rec["runs"].items():
      rows.append([f"student 1/{ratio}", method, f"{rec['student']['macs']:,.0f}",
                   f"{rec['student']['params']:,}", fmt([r["psnr"] for r in runs], 2),
                   fmt([r["ssim"] for r in runs], 4)])
  students = [(r, records[f"1/{r}"]["student"]) for r in cfg.ratios]
  widths = "; ".join(f"1/{r}: down {s['down_widths']}, blocks {s['block_widths']}, up "
                     f"{s['up_widths']}" for r, s in students)
  claims = []
  for ratio in cfg.ratios:
    runs = records[f"1/{ratio}"]["runs"]
    if not all(m in runs for m in METHODS):
      continue
    mean = {m: {k: float(np.mean([r[k] for r in runs[m]])) for k in ("psnr", "ssim")}
            for m in METHODS}
    claims.append(
        f"- 1/{ratio}: KA - scratch = {mean['ka']['psnr'] - mean['scratch']['psnr']:+.2f} dB PSNR, "
        f"{mean['ka']['ssim'] - mean['scratch']['ssim']:+.4f} SSIM; KA - MSE = "
        f"{mean['ka']['psnr'] - mean['mse']['psnr']:+.2f} dB, "
        f"{mean['ka']['ssim'] - mean['mse']['ssim']:+.4f}; KA - teacher = "
        f"{mean['ka']['psnr'] - t['psnr']:+.2f} dB, {mean['ka']['ssim'] - t['ssim']:+.4f}.")
  return ("# CAT: pruned and distilled image-to-image generators\n\n"
          f"Task {cfg.task}, {cfg.num_patches} training patches {cfg.patch_size}x{cfg.patch_size}, "
          f"PSNR/SSIM on 2 held-out {cfg.short_side}x{cfg.short_side} images; {cfg.steps} steps "
          f"(batch {cfg.batch_size}, Adam {cfg.lr}, b1 0.5) for teacher and every student; "
          f"lambda_recon {cfg.lambda_recon}, distillation weight {cfg.distill_weight} (KA: "
          f"-sum KA over 4 block outputs; MSE: 1x1 adaptors). Students: seeds {list(cfg.seeds)} "
          "(mean ± sd); one teacher. MACs per example.\n\n"
          + _report.markdown_table(["model", "training", "MACs", "params", "PSNR (dB)", "SSIM"],
                                   rows)
          + f"\nPruned widths: {widths}.\n\nDifferences of means (seeds):\n" + "\n".join(claims)
          + "\n")


def save_grid(images: dict[str, np.ndarray], path: str) -> None:
  """One row per held-out image, one column per model (seed 0)."""
  names = list(images)
  n = len(images["input"])
  fig, axes = plt.subplots(n, len(names), figsize=(1.6 * len(names), 1.75 * n), squeeze=False)
  for j, name in enumerate(names):
    for i in range(n):
      img = np.clip((images[name][i] + 1) / 2, 0, 1)
      axes[i, j].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      axes[i, j].axis("off")
    axes[0, j].set_title(name, fontsize=7)
  _report.save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="CI-sized run (1 seed, 20 steps)")
  parser.add_argument("--steps", type=int, default=None, help="teacher and student steps")
  parser.add_argument("--teacher-only", action="store_true",
                      help="train and score the teacher alone (vs the grey input): cat_teacher.json")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  if args.steps is not None:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  if args.teacher_only:
    records, _ = run(cfg, teacher_only=True)
    t, g = records["teacher"], records["grey_input"]
    _report.write("cat_teacher", {"config": dataclasses.asdict(cfg), "records": records},
                  f"# CAT teacher alone, {cfg.steps} steps\n\nheld-out PSNR {t['psnr']:.2f} dB "
                  f"(grey input {g['psnr']:.2f} dB), SSIM {t['ssim']:.4f} ({g['ssim']:.4f}). "
                  f"`python -m experiments.cat --teacher-only --steps {cfg.steps}`\n")
    return
  name = "cat_quick" if args.quick else "cat"
  t0 = time.time()
  records, images = run(cfg)
  md = summarize(cfg, records)
  md += f"\nTotal time {time.time() - t0:.0f} s (`python -m experiments.cat"
  md += " --quick`).\n" if args.quick else "`).\n"
  paths = _report.write(name, {"config": dataclasses.asdict(cfg), "records": records}, md)
  save_grid(images, paths["md"][:-3] + ".png")
  print(md)


if __name__ == "__main__":
  main()
