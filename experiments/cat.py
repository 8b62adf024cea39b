"""CAT on a small image-to-image task: prune a trained inception generator to 1/4 and 1/8 of its
MACs and train the pruned student from scratch, with MSE feature distillation, or with KA.

Task (``--task``): denoising (RGB + Gaussian noise of sd 0.1, the full run's) or grey -> RGB
colourisation, on 32x32 patches of six scikit-image sample images; PSNR and SSIM on the centre
128x128 squares of two held-out images (chelsea, coffee). Colourising two unseen images leaves a
network little to learn (its teacher stays within +1.2 dB of the grey input:
results/cat_headroom.md); denoising does not. The teacher is a
pix2pix-style generator with 4 inception-residual blocks of 6 branches (conv/depthwise x kernel
1/3/5), BatchNorm, trained with 100 * L1 (the full run; ``--gan-weight 1`` adds pix2pix's hinge
GAN against a conditional PatchGAN, which the CI-sized run keeps).
CAT: one global |gamma| threshold, bisected with the cost model until the student's MACs are
at or under the target; min width 3 for down/up layers (the paper's 16 is larger than this
tiny teacher's stem); students re-initialised (N(0, 0.02), gamma N(1, 0.02)) and trained with
the teacher's losses plus, for the distilled ones, weight *
(-sum KA) or weight * sum MSE(1x1 adaptor(student), teacher) on the 4 block outputs.
One teacher (seed 0), trained for ``teacher_steps`` (a pretrained model, as in the paper), with
its held-out and training-image PSNR/SSIM recorded every ``eval_every`` steps; every student
configuration runs with each seed (student and discriminator init, batch order) for ``steps``.
The generator's GAN term can be weighted, switched off (``--gan-weight 0``) or delayed
(``--gan-warmup``), and the discriminator given its own learning rate (``--d-lr``).
References: the input itself (the baseline) and an affine map of each input pixel fitted on
the training pixels (no network). MACs are per 32x32 example.

  python -m experiments.cat                  # results/cat_denoise.{json,md,png}, cat_teacher_*
  python -m experiments.cat --task gray2rgb  # results/cat_gray2rgb.*, cat_teacher_gray2rgb.*
  python -m experiments.cat --teacher-only   # results/cat_teacher_denoise.{json,md}
  python -m experiments.cat --quick          # CI-sized: results/cat_denoise_quick.*, ...
  # the same in parallel processes sharing one trained teacher, then one table:
  python -m experiments.cat --teacher-only --teacher-cache T.msgpack
  python -m experiments.cat --ratios 4 --seeds 0 --part --teacher-cache T.msgpack --out-dir P40
  ...                                        # one per ratio/seed
  python -m experiments.cat --merge P40 P41 P80 P81
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import jax
import numpy as np
import optax
from flax import serialization

from compressjax.data.image_pairs import (TASKS, TRAIN_IMAGES, ImagePairs, centre_crops,
                                          heldout_pairs, pair_batches, train_patches)
from compressjax.distill.cat import cat_prune, generator_macs
from compressjax.distill.pix2pix import (FeatureDistill, GanState, evaluate_generator, generate,
                                         generator_variables, image_scores, init_gan_state,
                                         make_gan_step)
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
  steps: int = 600  # every student
  teacher_steps: int = 3000
  batch_size: int = 16
  lr: float = 1e-3
  d_lr: float = 1e-3  # discriminator
  lambda_recon: float = 100.0
  gan_weight: float = 1.0  # 0: L1 (+ distillation) alone
  gan_warmup: int = 0  # steps of L1 alone (GAN weight 0) before gan_weight applies
  eval_every: int = 500  # teacher: held-out and training-image scores every so many steps
  ratios: tuple[int, ...] = (4, 8)
  min_width: int = 4
  distill_weight: float = 1.0


# L1 alone: on gray2rgb, with the GAN term (D lr 1e-3) the teacher reached 16.71 / 18.15 / 17.80
# dB held-out after 600 / 1500 / 3000 steps, L1 alone 17.05 / 17.31 / 16.97
# (results/cat_teacher_gray2rgb.md): the adversarial term is not what holds the teacher back,
# and L1 alone is cheaper and steadier.
# min_width 3: with a 3-channel input, the smallest generator at width 4 has 1/7.3 of the
# teacher's MACs (its 7x7 stem and output convs alone), so 1/8 needs narrower down/up layers.
# Students train as long as the teacher (at 600 steps, 1/4 students scored 19.0-22.1 dB: not yet
# past the noisy input's 20.45, so the methods could not be told apart), 3 seeds.
FULL = Config(task="denoise", gan_weight=0.0, min_width=3, steps=3000, seeds=(0, 1, 2))
# CI-sized: a 2-branch generator compiles much faster than the 6-branch one.
QUICK = Config(task="denoise", seeds=(0,), num_patches=128, ngf=4, branch_width=4,
               branches=(("conv", 3), ("dw", 3)), steps=10, teacher_steps=10, ratios=(2,),
               min_width=2, gan_warmup=5, eval_every=5)


def train(cfg: Config, step, state: GanState, data: ImagePairs, seed: int, steps: int,
          every: int = 0, on_eval: Callable[[int, GanState], None] | None = None
          ) -> tuple[GanState, dict]:
  """``steps`` steps over shuffled epochs of ``data``, calling ``on_eval(n, state)`` every
  ``every`` steps (0: never); returns the state and the last step's metrics."""
  n, epoch, metrics = 0, 0, {}
  while n < steps:
    for x, y in pair_batches(data, cfg.batch_size, seed=seed, epoch=epoch):
      state, metrics = step(state, x, y)
      n += 1
      if on_eval is not None and every and (n % every == 0 or n == steps):
        on_eval(n, state)
      if n == steps:
        break
    epoch += 1
  return state, {k: float(v) for k, v in metrics.items()}


def gan_schedule(cfg: Config) -> float | Callable[[Any], Any]:
  """The generator's GAN weight: ``cfg.gan_weight``, after ``cfg.gan_warmup`` steps of 0."""
  if not cfg.gan_warmup:
    return cfg.gan_weight
  return lambda step: cfg.gan_weight * (step >= cfg.gan_warmup)


def input_scores(pairs: ImagePairs) -> dict[str, float]:
  """PSNR/SSIM of the input itself (a one-channel one repeated to RGB): the baseline."""
  return image_scores(np.broadcast_to(pairs.inputs, pairs.targets.shape), pairs.targets)


def affine_map_baseline(cfg: Config, test: ImagePairs) -> dict[str, float]:
  """A reference without a network: an affine map from each input pixel's channels to its RGB
  (least squares over every pixel of the training images), applied to the held-out inputs."""
  fit = centre_crops(cfg.task, TRAIN_IMAGES, cfg.short_side)
  design = lambda x: np.concatenate([x.reshape(-1, x.shape[-1]), np.ones((x[..., 0].size, 1))], 1)
  coef = np.linalg.lstsq(design(fit.inputs), fit.targets.reshape(-1, 3), rcond=None)[0]
  out = np.clip(design(test.inputs) @ coef, -1, 1).reshape(test.targets.shape)
  return {**image_scores(out.astype(np.float32), test.targets), "params": int(coef.size)}


def describe(g: Generator, variables: Any, example: np.ndarray) -> dict[str, Any]:
  return {"macs": generator_macs(g, example), "params": param_count(variables["params"]),
          "down_widths": g.down_widths, "block_widths": g.block_widths, "up_widths": g.up_widths}


# Config fields that do not change the teacher (a cached teacher serves any values of these).
STUDENT_FIELDS = ("seeds", "steps", "ratios", "min_width", "distill_weight")


def teacher_key(cfg: Config) -> str:
  """The teacher-defining part of ``cfg``, as JSON (the teacher cache checks it)."""
  fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in STUDENT_FIELDS}
  return json.dumps(fields, sort_keys=True)


def load_teacher(path: str, cfg: Config) -> tuple[Any, dict[str, Any]] | None:
  """(variables, record) of a teacher saved by ``save_teacher`` with the same teacher config;
  None when ``path`` does not exist. A teacher trained otherwise is refused, not reused."""
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    saved = serialization.msgpack_restore(f.read())
  if saved["key"] != teacher_key(cfg):
    raise ValueError(f"teacher cache {path} holds a teacher trained with {saved['key']}, not "
                     f"{teacher_key(cfg)}; delete it or pass another --teacher-cache")
  return saved["variables"], json.loads(saved["record"])


def save_teacher(path: str, cfg: Config, variables: Any, record: dict[str, Any]) -> None:
  blob = {"key": teacher_key(cfg), "record": json.dumps(record),
          "variables": jax.tree.map(np.asarray, variables)}
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(blob))


def run(cfg: Config, teacher_only: bool = False, teacher_cache: str | None = None,
        on_student: Callable[[dict[str, Any], dict[str, np.ndarray]], None] | None = None
        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Trains the teacher (or loads it from ``teacher_cache``, saving it there after training)
  and, unless ``teacher_only``, every student, calling ``on_student(records, images)`` after
  each; returns the records and the seed-0 outputs on the held-out images."""
  data = train_patches(cfg.task, cfg.num_patches, cfg.patch_size, seed=0,
                       short_side=cfg.short_side)
  test = heldout_pairs(cfg.task, short_side=cfg.short_side)
  x0, y0 = data.inputs[:cfg.batch_size], data.targets[:cfg.batch_size]
  disc = PatchDiscriminator(ndf=cfg.ndf, n_layers=2)
  g_tx, d_tx = optax.adam(cfg.lr, b1=0.5), optax.adam(cfg.d_lr, b1=0.5)
  images = {"input": test.inputs, "target": test.targets}
  seen = centre_crops(cfg.task, TRAIN_IMAGES, cfg.short_side)
  records: dict[str, Any] = {"input": input_scores(test),
                             "affine_map": affine_map_baseline(cfg, test),
                             "input_train_images": input_scores(seen)}

  teacher = uniform_generator(cfg.ngf, cfg.n_blocks, cfg.branch_width, branches=cfg.branches)
  curve = []

  def score(n: int, state: GanState) -> None:
    v = generator_variables(state)
    curve.append({"step": n, "heldout": evaluate_generator(teacher, v, test.inputs, test.targets),
                  "train_images": evaluate_generator(teacher, v, seen.inputs, seen.targets)})
    print(f"teacher step {n}: {curve[-1]}", flush=True)

  cached = load_teacher(teacher_cache, cfg) if teacher_cache else None
  if cached is None:
    t0 = time.time()
    step = make_gan_step(teacher, disc, g_tx, d_tx, cfg.lambda_recon,
                         gan_weight=gan_schedule(cfg))
    state, last = train(cfg, step, init_gan_state(0, teacher, disc, g_tx, d_tx, x0, y0), data,
                        seed=0, steps=cfg.teacher_steps, every=cfg.eval_every, on_eval=score)
    t_vars = generator_variables(state)
    records["teacher"] = {**describe(teacher, t_vars, x0),
                          **image_scores(generate(teacher, t_vars, test.inputs), test.targets),
                          "train_metrics": last, "curve": curve, "time_s": time.time() - t0}
    if teacher_cache:
      save_teacher(teacher_cache, cfg, t_vars, records["teacher"])
  else:
    t_vars, records["teacher"] = cached
    records["teacher"]["from_cache"] = teacher_cache
  images["teacher"] = generate(teacher, t_vars, test.inputs)
  print(f"teacher: {records['teacher']}", flush=True)

  if teacher_only:
    return records, images
  # every ratio pruned before any student trains: an unreachable one fails in seconds
  pruned_at = {ratio: cat_prune(teacher, t_vars, x0, records["teacher"]["macs"] / ratio,
                                cfg.min_width) for ratio in cfg.ratios}
  for ratio, pruned in pruned_at.items():
    student = pruned.generator
    rec = records[f"1/{ratio}"] = {"target_macs": pruned.target_macs,
                                   "threshold": pruned.threshold, "runs": {}}
    for method in METHODS:
      distill = None if method == "scratch" else FeatureDistill(
          teacher, t_vars, student.block_paths, teacher.block_paths, method, cfg.distill_weight)
      step = make_gan_step(student, disc, g_tx, d_tx, cfg.lambda_recon, distill,
                           gan_schedule(cfg))
      for seed in cfg.seeds:
        t0 = time.time()
        init = init_gan_state(seed + 1, student, disc, g_tx, d_tx, x0, y0, distill)
        state, last = train(cfg, step, init, data, seed, cfg.steps)
        s_vars = generator_variables(state)
        out = generate(student, s_vars, test.inputs)
        rec.setdefault("student", describe(student, s_vars, x0))
        rec["runs"].setdefault(method, []).append({
            "seed": seed, **image_scores(out, test.targets), "train_metrics": last,
            "time_s": time.time() - t0})
        if seed == cfg.seeds[0]:
          images[f"1/{ratio} {method}"] = out
        print(f"1/{ratio} {method} seed {seed}: {rec['runs'][method][-1]}", flush=True)
        if on_student is not None:
          on_student(records, images)
  return records, images


def summarize(cfg: Config, records: dict[str, Any]) -> str:
  """The Markdown table: MACs, params, PSNR and SSIM (mean ± sd over seeds)."""
  t = records["teacher"]

  def fmt(vals: list[float], digits: int) -> str:
    m, sd = _report.mean_sd(vals)
    return f"{m:.{digits}f} ± {sd:.{digits}f}"

  g, c = records["input"], records["affine_map"]
  rows = [["input (no model)", "-", "-", "-", f"{g['psnr']:.2f}", f"{g['ssim']:.4f}"],
          ["affine map (no network)", "least squares", "-", f"{c['params']}",
           f"{c['psnr']:.2f}", f"{c['ssim']:.4f}"],
          ["teacher", f"{cfg.teacher_steps} steps", f"{t['macs']:,.0f}", f"{t['params']:,}",
           f"{t['psnr']:.2f}", f"{t['ssim']:.4f}"]]
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
          f"PSNR/SSIM on 2 held-out {cfg.short_side}x{cfg.short_side} images; teacher "
          f"{cfg.teacher_steps} steps, every student {cfg.steps} steps; {training(cfg)}; "
          f"distillation weight {cfg.distill_weight} (KA: -sum KA over 4 block outputs; MSE: 1x1 "
          f"adaptors). Students: seeds {list(cfg.seeds)} (mean ± sd); one teacher. MACs per "
          "example. The affine map is a reference, not the baseline: an affine map of each input "
          "pixel to RGB fitted on the training images' pixels.\n\n"
          + _report.markdown_table(["model", "training", "MACs", "params", "PSNR (dB)", "SSIM"],
                                   rows)
          + f"\nPruned widths: {widths}.\n\nDifferences of means (seeds):\n" + "\n".join(claims)
          + "\n\n" + teacher_summary(cfg, records))


def training(cfg: Config) -> str:
  """The shared training settings, in words."""
  warm = f" after {cfg.gan_warmup} steps of L1 alone" if cfg.gan_warmup else ""
  gan = (f"{cfg.gan_weight} * hinge GAN{warm} + " if cfg.gan_weight else "")
  return (f"batch {cfg.batch_size}, Adam b1 0.5, lr {cfg.lr} (G) / {cfg.d_lr} (D); generator loss "
          f"{gan}{cfg.lambda_recon} * L1" + ("" if cfg.gan_weight else " (no GAN term)"))


def teacher_summary(cfg: Config, records: dict[str, Any]) -> str:
  """The teacher's held-out and training-image scores along training, against the input."""
  t, g, c = records["teacher"], records["input"], records["affine_map"]
  gt = records["input_train_images"]
  rows = [[p["step"], f"{p['heldout']['psnr']:.2f}",
           f"{p['heldout']['psnr'] - g['psnr']:+.2f}", f"{p['heldout']['ssim']:.4f}",
           f"{p['train_images']['psnr']:.2f}", f"{p['train_images']['ssim']:.4f}"]
          for p in t["curve"]]
  return (f"## Teacher ({cfg.teacher_steps} steps; {training(cfg)})\n\n"
          f"Held-out PSNR {t['psnr']:.2f} dB ({t['psnr'] - g['psnr']:+.2f} dB over the "
          f"input's {g['psnr']:.2f}), SSIM {t['ssim']:.4f} (input {g['ssim']:.4f}); the affine "
          f"map scores {c['psnr']:.2f} dB / {c['ssim']:.4f}. Training images: centre "
          f"squares of the 6 training images (their patches were seen in training; the "
          f"input scores "
          f"{gt['psnr']:.2f} dB / {gt['ssim']:.4f} there).\n\n"
          + _report.markdown_table(["step", "held-out PSNR", "vs input (dB)", "held-out SSIM",
                                    "train-image PSNR", "train-image SSIM"], rows))


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


def save_part(out_dir: str, cfg: Config, records: dict[str, Any],
              images: dict[str, np.ndarray]) -> None:
  """One process's share (some ratios/seeds) as cat_part.{json,npz}, for ``merge_parts``."""
  _report.write("cat_part", {"config": dataclasses.asdict(cfg), "records": records}, "", out_dir)
  np.savez(os.path.join(out_dir, "cat_part.npz"),
           **{k.replace("/", ":"): v for k, v in images.items()})


def merge_parts(dirs: list[str]) -> tuple[Config, dict[str, Any], dict[str, np.ndarray]]:
  """The union of ``save_part`` outputs run with one teacher and the same training settings
  (ratios and seeds may differ): one config, records and images, as if run in one process."""
  configs, records, images = [], {}, {}
  for d in dirs:
    with open(os.path.join(d, "cat_part.json")) as f:
      part = json.load(f)
    configs.append(Config(**{k: tuple(map(tuple, v)) if k == "branches" else
                             tuple(v) if isinstance(v, list) else v
                             for k, v in part["config"].items()}))
    same = lambda c: {**dataclasses.asdict(c), "ratios": (), "seeds": ()}
    if same(configs[-1]) != same(configs[0]):
      raise ValueError(f"part {d} was run with other settings than {dirs[0]}: "
                       f"{same(configs[-1])} vs {same(configs[0])}")
    for key, rec in part["records"].items():
      if key.startswith("1/") and key in records:
        for method, runs in rec["runs"].items():
          records[key]["runs"].setdefault(method, []).extend(runs)
      else:
        records.setdefault(key, rec)
    with np.load(os.path.join(d, "cat_part.npz")) as z:
      for k in z.files:
        images.setdefault(k.replace(":", "/"), z[k])
  # the ratios and seeds that ran (a part saved mid-run holds fewer than its config names)
  ran = {k: rec for k, rec in records.items() if k.startswith("1/") and rec["runs"]}
  records = {k: rec for k, rec in records.items() if not k.startswith("1/") or k in ran}
  cfg = dataclasses.replace(
      configs[0], ratios=tuple(sorted(int(k[2:]) for k in ran)),
      seeds=tuple(sorted({r["seed"] for rec in ran.values() for rs in rec["runs"].values()
                          for r in rs})))
  return cfg, records, images


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="CI-sized run (1 seed, 10 steps)")
  parser.add_argument("--task", choices=TASKS, default=None, help="image-to-image task")
  parser.add_argument("--steps", type=int, default=None, help="steps of every student")
  parser.add_argument("--teacher-steps", type=int, default=None, help="steps of the teacher")
  parser.add_argument("--gan-weight", type=float, default=None,
                      help="weight of the generator's GAN term (0: L1 alone)")
  parser.add_argument("--gan-warmup", type=int, default=None,
                      help="steps of L1 alone before the GAN term switches on")
  parser.add_argument("--d-lr", type=float, default=None, help="discriminator learning rate")
  parser.add_argument("--teacher-cache", default=None,
                      help="file of the trained teacher: loaded if present (same teacher config), "
                           "else written after training")
  parser.add_argument("--out-dir", default=_report.RESULTS_DIR, help="where results are written")
  parser.add_argument("--teacher-only", action="store_true",
                      help="train and score the teacher alone (vs the input): cat_teacher_<task>.*")
  parser.add_argument("--ratios", type=int, nargs="+", default=None, help="MAC reduction factors")
  parser.add_argument("--seeds", type=int, nargs="+", default=None, help="student seeds")
  parser.add_argument("--part", action="store_true",
                      help="write only cat_part.{json,npz} to --out-dir, for a later --merge "
                           "(to run ratios/seeds in parallel processes with one cached teacher)")
  parser.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                      help="tables of the --part outputs in these folders (trains nothing)")
  args = parser.parse_args(argv)
  cfg = QUICK if args.quick else FULL
  overrides = {"task": args.task, "steps": args.steps, "teacher_steps": args.teacher_steps,
               "gan_weight": args.gan_weight, "gan_warmup": args.gan_warmup, "d_lr": args.d_lr,
               "ratios": args.ratios and tuple(args.ratios),
               "seeds": args.seeds and tuple(args.seeds)}
  cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
  command = " ".join(["python -m experiments.cat", *(sys.argv[1:] if argv is None else argv)])
  t0 = time.time()
  suffix = f"_{cfg.task}" + ("_quick" if args.quick else "")
  # students done so far, as a part that --merge reads, should the run be cut short
  progress = args.out_dir if args.part else os.path.join(args.out_dir, f"cat{suffix}_progress")
  if args.merge:
    cfg, records, images = merge_parts(args.merge)
  else:
    records, images = run(cfg, teacher_only=args.teacher_only, teacher_cache=args.teacher_cache,
                          on_student=lambda r, i: save_part(progress, cfg, r, i))
  if args.part:
    save_part(args.out_dir, cfg, records, images)
    return
  shutil.rmtree(progress, ignore_errors=True)
  t = records["teacher"]
  cached = f", loaded from {t['from_cache']}" if "from_cache" in t else ""
  teacher_md = (f"# CAT teacher\n\n{teacher_summary(cfg, records)}\n`{command.strip()}`; the "
                f"teacher trained in {t['time_s']:.0f} s{cached}.\n")
  _report.write("cat_teacher" + suffix, {"config": dataclasses.asdict(cfg),
                                         "records": {k: records[k] for k in
                                                     ("input", "affine_map",
                                                      "input_train_images", "teacher")}},
                teacher_md, args.out_dir)
  if args.teacher_only:
    print(teacher_md)
    return
  if args.merge:  # each student run's time_s is in the JSON
    md = summarize(cfg, records) + f"\n`{command.strip()}`, after the --part runs.\n"
  else:
    md = summarize(cfg, records) + f"\nTotal time {time.time() - t0:.0f} s (`{command.strip()}`).\n"
  paths = _report.write("cat" + suffix, {"config": dataclasses.asdict(cfg), "records": records}, md,
                        args.out_dir)
  save_grid(images, paths["md"][:-3] + ".png")
  print(md)


if __name__ == "__main__":
  main()
