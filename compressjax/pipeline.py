"""The main job end to end: float teacher -> compressed student -> packed integers -> report.

``run_story(workdir)`` is what ``compressjax demo`` runs on the offline digits data:

1. **teacher**: train the float CNN of the ``digits_cnn`` config (with ``reuse``, a finished
   run already in ``<workdir>/float`` is loaded instead).
2. **baselines**: uniform-bit QAT of the same CNN from the teacher's weights (LSQ W8A8 and
   W4A4, first/last layer 8-bit), exported and served: what the student is compared with.
3. **student**: the CNN compressed by composing transforms: LSQ W4A4 rules (8-bit first and
   last layer) with every weight quantizer wrapped in ``keep_zeros``; an optax chain ending in
   gradual magnitude pruning (Zhu & Gupta) of the inner layers; Hinton distillation from the
   teacher. It starts from the teacher's weights: QAT and gradual pruning of a trained model
   converge in a few epochs, and equal shapes let ``init_from`` carry every weight over (a
   narrower student would train from scratch, as long again as the teacher).
4. **serve**: export to packed integer ``QArray``s, run the serving model and check its
   predictions equal the fake-quant ones; each site's serving path
   (:func:`compressjax.export.serving_paths`: int8 dot / int8 conv / kernel / xla dequant /
   float) is reported, and the kernel dispatcher's choice for its dot sites.
5. **report**: accuracy, bits, serving path and sparsity per site (``module/param``, e.g.
   ``conv1/kernel``), bytes, MACs/BitOPs, written as
   ``summary.json``, ``summary.md`` and ``summary.png`` in ``workdir``.

Baselines and student go through the same function (``_fit_compressed``) and the same serving
check; the student only adds ``keep_zeros``, the pruner and the teacher's loss.

Stage lengths come from the config, then the stage's own overrides (``Story.qat_overrides``,
``Story.student_overrides``), then the caller's: ``train.epochs=1`` shortens every stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from compressjax import cost, kernels, prune
from compressjax._story_report import markdown, plot
from compressjax.config import Config, get_config
from compressjax.core import Compression, KeepZeros, compress, discover, keep_zeros
from compressjax.data import get_augment, steps_per_epoch
from compressjax.distill.objective import hinton_objective
from compressjax.core.tree_paths import get_path
from compressjax.export import export, serving_paths, size_report
from compressjax.qarray import QArray
from compressjax.quant.recipes import recipe_rules
from compressjax.runs import Setup, setup, train_classifier
from compressjax.train import (fit, make_eval_step, make_optimizer, make_train_step,
                               restore_variables, total_steps)
from compressjax.train.distill_step import make_distill_step
from compressjax.train.quantized import check_init, from_float, init_examples
from compressjax.train.state import state_from_variables

FILES = {"json": "summary.json", "markdown": "summary.md", "plot": "summary.png"}
# A served logit further than this from fake-quant's: an activation code rounded apart (the int8
# paths sum exactly where fake-quant sums floats; see compressjax.export), not summation order.
LOGIT_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Story:
  """What the story compresses and how (stage lengths: see the module docstring).

  Attributes:
    config: the float model's config (preset name or .py path).
    method, w_bits, a_bits, edge_bits: the student's quantization recipe
      (:mod:`compressjax.quant.recipes`); ``edge_bits`` for the first and last layer.
    sparsity: magnitude-pruned fraction of each inner layer's kernel (first/last stay dense).
    prune_until: fraction of the student's steps after which the sparsity is reached.
    prune_updates_per_epoch: how often the masks are recomputed until then.
    temperature, alpha: Hinton distillation, ``(1 - alpha) CE + alpha T^2 KL``.
    baselines: (w_bits, a_bits) of the uniform QAT models compared with (same method and
      edge bits, no pruning, cross-entropy only).
    qat_overrides, student_overrides: config overrides of those stages.
  """

  config: str = "digits_cnn"
  method: str = "lsq"
  w_bits: int = 4
  a_bits: int = 4
  edge_bits: int = 8
  sparsity: float = 0.5
  prune_until: float = 0.6
  prune_updates_per_epoch: int = 4
  temperature: float = 4.0
  alpha: float = 0.9
  baselines: tuple[tuple[int, int], ...] = ((8, 8), (4, 4))
  qat_overrides: tuple[str, ...] = ("train.epochs=5", "optim.lr=0.02")
  student_overrides: tuple[str, ...] = ("train.epochs=10", "optim.lr=0.02")

  def __post_init__(self):
    if not 0.0 <= self.sparsity < 1.0:
      raise ValueError(f"Story.sparsity={self.sparsity!r}; allowed: 0 <= sparsity < 1")
    if not 0.0 < self.prune_until <= 1.0:
      raise ValueError(f"Story.prune_until={self.prune_until!r}; allowed: 0 < prune_until <= 1")
    if self.prune_updates_per_epoch < 1:
      raise ValueError(f"Story.prune_updates_per_epoch={self.prune_updates_per_epoch!r}; "
                       "allowed: >= 1")


@dataclasses.dataclass(frozen=True, eq=False)
class _Teacher:
  """The trained float model with what every compressed model starts from."""

  setup: Setup  # data and the float architecture (abstract state: nothing computed)
  variables: dict
  accuracy: float  # on the test split, measured like every compressed model's
  examples: np.ndarray  # training images that initialise the quantizers
  sites: list  # discovered on the examples
  profile: cost.Profile  # per example


@dataclasses.dataclass(frozen=True, eq=False)
class _Compressed:
  """A trained compressed model; ``masks`` is None without a pruner."""

  name: str
  rules: tuple
  model: nn.Module
  variables: dict
  masks: Any
  steps: int
  epochs: float
  workdir: str


def run_story(workdir: str = "runs/demo", overrides: Sequence[str] = (), *, reuse: bool = False,
              story: Story = Story(), log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the stages in ``workdir`` and returns the summary that ``summary.json`` holds.

  Args:
    workdir: run directory; stage runs go to ``float/``, ``qat_w<w>a<a>/``, ``student/``.
    overrides: ``section.key=value`` config overrides applied to every stage, last.
    reuse: load a finished float run in ``<workdir>/float`` instead of retraining it.
    story: the compression recipe.
    log: where the stage headers go.
  """
  workdir = os.path.abspath(workdir)
  float_dir = os.path.join(workdir, "float")
  names = [_baseline_name(w, a) for w, a in story.baselines]
  cfg = get_config(story.config, overrides)
  qat_cfg = get_config(story.config, [*story.qat_overrides, *overrides])
  student_cfg = get_config(story.config, [*story.student_overrides, *overrides])
  reused = reuse and os.path.isdir(os.path.join(float_dir, "checkpoints"))
  for name in ["student", *names, *([] if reuse else ["float"])]:
    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  for name in FILES.values():  # a failed run leaves no stale report behind
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(workdir, name))
  timings: dict[str, float] = {}
  stage = _stages(timings, 4 + len(names), log)

  with stage("teacher", f"float teacher: {'load' if reused else 'train'} {cfg.name}"):
    trained = train_classifier(cfg, float_dir)
    teacher = _load_teacher(cfg, float_dir)
  baselines = {}
  for (w, a), name in zip(story.baselines, names):
    with stage(name, f"baseline: {story.method} W{w}A{a} QAT (first/last {story.edge_bits}-bit)"):
      rules = recipe_rules(story.method, teacher.sites, w_bits=w, a_bits=a,
                           edge_bits=story.edge_bits)
      m = _fit_compressed(teacher, qat_cfg, name, rules, os.path.join(workdir, name))
      baselines[name] = (m, _serve(teacher, m))
      _log_artifacts(log, name, baselines[name][1]["artifacts"])
  with stage("student", f"student: {story.method} W{story.w_bits}A{story.a_bits} + "
             f"{story.sparsity:.0%} magnitude pruning + distillation"):
    student = _fit_compressed(teacher, student_cfg, "student",
                              student_rules(story, teacher.sites),
                              os.path.join(workdir, "student"), story=story)
  with stage("serve", "student: export to packed integers, serve, compare with fake-quant"):
    served = _serve(teacher, student)
    _log_artifacts(log, "student", served["artifacts"])
  with stage("report", "report: accuracy, bits, sparsity, bytes, MACs/BitOPs"):
    summary = _summary(story, teacher, {**trained, "reused": reused}, baselines,
                       (student, served), timings)
  timings["total"] = round(sum(timings.values()), 2)
  summary["timings_s"] = timings
  summary["files"] = {k: os.path.join(workdir, v) for k, v in FILES.items()}
  _write(summary)
  return summary


def _log_artifacts(log: Callable[[str], None], name: str, a: dict[str, Any]) -> None:
  log(f"    {name} artifacts: StableHLO {a['stablehlo_module_bytes']:,} B module + "
      f"{a['stablehlo_weights_bytes']:,} B weights, ONNX {a['onnx_bytes']:,} B; onnxruntime "
      f"agrees on {a['onnx_argmax_agreement']:.2%} of the test images "
      f"(max logit diff {a['onnx_max_abs_diff']:.2e})")


def _baseline_name(w_bits: int, a_bits: int) -> str:
  return f"qat_w{w_bits}a{a_bits}"


def _stages(timings: dict[str, float], count: int, log: Callable[[str], None]):
  """A context manager factory: logs ``[i/count] title`` and records the stage's seconds."""

  @contextlib.contextmanager
  def stage(name: str, title: str):
    log(f"[{len(timings) + 1}/{count}] {title}")
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)

  return stage


def student_rules(story: Story, sites: Sequence[Any]) -> list:
  """The recipe's rules with every weight quantizer wrapped in ``keep_zeros`` (pruned stay 0)."""
  rules = recipe_rules(story.method, sites, w_bits=story.w_bits, a_bits=story.a_bits,
                       edge_bits=story.edge_bits)
  return [r if r.weight is None else dataclasses.replace(r, weight=keep_zeros(r.weight))
          for r in rules]


def _load_teacher(cfg: Config, float_dir: str) -> _Teacher:
  s = setup(cfg, abstract=True)
  variables = restore_variables(float_dir, s.state.variables)
  images, labels = _test_split(s)
  examples = init_examples(s.dataset.train)
  sites = discover(s.model, examples, train=False)
  profile = cost.profile(s.model, examples[:1], train=False)
  return _Teacher(s, variables, _accuracy(_logits(s.model, variables, images), labels), examples,
                  sites, profile)


def _fit_compressed(teacher: _Teacher, cfg: Config, name: str, rules: Sequence[Any],
                    workdir: str, story: Story | None = None) -> _Compressed:
  """``compress`` with ``rules``, start from the teacher's weights, ``fit`` for ``cfg.train``.

  With a ``story`` (the student) the optimizer chain ends in its gradual magnitude pruner and
  the loss is Hinton distillation from the teacher; without, plain QAT with cross-entropy.
  """
  data, float_model = teacher.setup.dataset, teacher.setup.model
  model = compress(float_model, rules)
  # One compiled forward pass (eager, every op of it would compile on its own).
  variables = jax.jit(functools.partial(from_float, model))(teacher.variables, teacher.examples)
  check_init(float_model, teacher.variables, model, variables, teacher.examples, what=name)
  steps = total_steps(cfg.train, len(data.train))
  epoch = steps_per_epoch(len(data.train), cfg.train.batch_size)
  tx = make_optimizer(cfg.optim, total_steps=steps, steps_per_epoch=epoch)
  if story is None:
    step = make_train_step(model, tx)
  else:
    schedule = prune.polynomial(0, max(1, round(story.prune_until * steps)),
                                frequency=max(1, epoch // story.prune_updates_per_epoch))
    order = prune.call_order(model, variables, teacher.examples[:1])  # train=False by default
    tx = optax.chain(tx, prune.magnitude(story.sparsity, schedule, order=order))
    step = make_distill_step(model, tx, float_model, teacher.variables,
                             hinton_objective(story.temperature, story.alpha))
  state = state_from_variables(variables, tx, jax.random.PRNGKey(cfg.train.seed))
  augment = data.augment if cfg.data.augment == "default" else get_augment(cfg.data.augment)
  result = fit(state, step, data.train, cfg.train, workdir=workdir,
               eval_step=make_eval_step(model), eval_data=data.test, augment=augment)
  masks = None if story is None else prune.get_masks(result.state.opt_state)
  done = int(result.state.step)
  return _Compressed(name, tuple(rules), model, result.state.variables, masks, done,
                     round(done / epoch, 2), workdir)


def _logits(model: nn.Module, variables: dict, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


def _test_split(s: Setup) -> tuple[np.ndarray, np.ndarray]:
  test = s.dataset.test
  return test.take(np.arange(len(test)))


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(logits.argmax(-1) == labels))


def _serve(teacher: _Teacher, m: _Compressed) -> dict[str, Any]:
  """Exports ``m``, serves it on the test split and compares with its fake-quant outputs."""
  images, labels = _test_split(teacher.setup)
  serving_model, serving_vars = export(m.model, m.variables, images[:1], train=False)
  fake = _logits(m.model, m.variables, images)
  served = _logits(serving_model, serving_vars, images)
  paths = serving_paths(serving_model, serving_vars, images[:1], train=False)
  dense = {site.name: kernels.choose_backend(len(images), kernel)
           for site in teacher.profile.sites if site.kind == "dot_general"
           for kernel in [_served_weight(serving_vars, site.name)]
           if isinstance(kernel, QArray)}
  from compressjax.artifacts import write_artifacts  # pylint: disable=g-import-not-at-top

  # The whole test split is the artifacts' batch, so their agreement is over every test image.
  # Pruned kernels are stored as bitmap + nonzero codes in the StableHLO artifact.
  pruned = {} if m.masks is None else {s.name: "bitmap" for s in teacher.profile.sites
                                       if get_path(m.masks, s.param) is not None}
  artifacts = write_artifacts(serving_model, serving_vars, images,
                              os.path.join(m.workdir, "artifacts"), sparse=pruned)
  return {
      "serving_vars": serving_vars,
      "artifacts": artifacts,
      "serving_paths": {name: list(v) for name, v in paths.items()},
      "fake_quant_accuracy": _accuracy(fake, labels),
      "served_accuracy": _accuracy(served, labels),
      "prediction_mismatches": int(np.sum(fake.argmax(-1) != served.argmax(-1))),
      "max_logit_diff": float(np.max(np.abs(fake - served))),
      "images_with_moved_logits": int(np.sum(np.max(np.abs(fake - served), -1) > LOGIT_TOL)),
      "dispatch": {"platform": jax.default_backend(), "rows": len(images), "backends": dense},
  }


def _served_weight(serving_vars: dict, name: str) -> Any:
  """The exported weight (a QArray in the op's weight view) of site ``name``, or None."""
  state = get_path(serving_vars.get("served", {}), name)
  return None if state is None else state.get("weight")


def site_bits(rules: Sequence[Any], sites: Sequence[Any]) -> tuple[dict, dict]:
  """Per-site (weight bits, input bits) of ``rules``, keyed by site name; None is float.

  ``sites``: :func:`compressjax.core.discover`'s sites (or site names)."""
  spec = Compression(tuple(rules))

  def bits(t: Any) -> int | None:
    t = t.inner if isinstance(t, KeepZeros) else t
    return None if t is None else int(t.bits)

  sites = [s for s in sites if isinstance(s, str) or s.has_weight]
  rules_at = {getattr(s, "name", s): spec.rule_for(s) for s in sites}
  return ({p: r and bits(r.weight) for p, r in rules_at.items()},
          {p: r and bits(r.act) for p, r in rules_at.items()})


def _model_entry(teacher: _Teacher, label: str, m: _Compressed, served: dict,
                 timings: dict[str, float]) -> dict[str, Any]:
  """A compressed model's row: served and fake-quant accuracy, bytes, BitOPs, bits, checks."""
  w_bits, a_bits = site_bits(m.rules, teacher.sites)
  w_bits = {k: v for k, v in w_bits.items() if k in teacher.profile.paths}
  a_bits = {k: v for k, v in a_bits.items() if k in teacher.profile.paths}
  return {
      "name": m.name, "label": label, "accuracy": served["served_accuracy"],
      "fake_quant_accuracy": served["fake_quant_accuracy"],
      "bytes": size_report(served["serving_vars"]).total_bytes,
      "bitops": teacher.profile.bitops(w_bits, a_bits), "w_bits": w_bits, "a_bits": a_bits,
      "steps": m.steps, "time_s": timings[m.name], "checkpoint": os.path.join(
          m.workdir, "checkpoints", str(m.steps)),
      "prediction_mismatches": served["prediction_mismatches"],
      "max_logit_diff": served["max_logit_diff"],
      "images_with_moved_logits": served["images_with_moved_logits"],
      "artifacts": served["artifacts"],
  }


def _summary(story: Story, teacher: _Teacher, trained: dict, baselines: dict,
             student_run: tuple[_Compressed, dict], timings: dict[str, float]) -> dict[str, Any]:
  """The JSON report: models (accuracy, bytes, BitOPs), layers, checks; every number measured."""
  cfg, profile = teacher.setup.cfg, teacher.profile
  student, served = student_run
  serving_vars = served["serving_vars"]
  float_size = size_report(teacher.variables)
  served_size = size_report(serving_vars)
  sparsity = prune.sparsity_report(student.variables["params"], student.masks)
  pruned = [s.name for s in profile.sites if s.param in sparsity["layers"]]
  by_name = {s.name: s for s in teacher.sites}
  entry = _model_entry(teacher, f"{story.method} W{story.w_bits}A{story.a_bits} + "
                       f"{story.sparsity:.0%} pruned + KD", student, served, timings)
  bitops = profile.bitops_per_site(entry["w_bits"], entry["a_bits"])

  def served_weight(name: str) -> Any:
    kernel = _served_weight(serving_vars, name)
    return get_path(serving_vars["params"], by_name[name].param) if kernel is None else kernel

  def zeros(name: str) -> float:
    kernel = served_weight(name)
    kernel = kernel.dequantize() if isinstance(kernel, QArray) else kernel
    return float(np.mean(np.asarray(kernel) == 0))

  def masked_zero(name: str) -> bool:
    site = by_name[name]
    perm, view = site.weight_layout()
    mask = np.transpose(np.asarray(get_path(student.masks, site.param)), perm).reshape(view)
    kernel = np.asarray(served_weight(name).dequantize()).reshape(view)
    return bool(np.all(kernel[~mask] == 0))

  def served_bytes(name: str) -> int:
    key = f"served/{name}/weight"
    return served_size.per_leaf.get(key, served_size.per_leaf.get(f"params/{by_name[name].param}"))

  paths = served["serving_paths"]
  layers = [{
      "site": site.name, "module": site.module, "op": site.kind, "macs": site.macs,
      "params": site.kernel_params,
      "serving_path": paths.get(site.name, ["float", ""])[0],
      "serving_why": paths.get(site.name, ["float", ""])[1],
      "w_bits": entry["w_bits"][site.name], "a_bits": entry["a_bits"][site.name],
      "bitops": bitops[site.name],
      "sparsity": sparsity["layers"].get(site.param, {}).get("sparsity"),
      "served_zeros": zeros(site.name),
      "float_bytes": float_size.per_leaf[f"params/{site.param}"],
      "served_bytes": served_bytes(site.name),
  } for site in profile.sites]

  models = [{"name": "float", "label": "float32 teacher",
             "accuracy": teacher.accuracy, "fake_quant_accuracy": None,
             "bytes": float_size.total_bytes, "bitops": profile.bitops(None, None),
             "steps": trained["steps"], "time_s": timings["teacher"],
             "checkpoint": trained["checkpoint"]}]
  models += [_model_entry(teacher, f"QAT {story.method} W{w}A{a}", m, s, timings)
             for (w, a), (m, s) in zip(story.baselines, baselines.values())]
  from compressjax.artifacts.sparse import stored_bytes  # pylint: disable=g-import-not-at-top

  models.append({**entry, "sparse_bytes": stored_bytes(serving_vars,
                                                       dict.fromkeys(pruned, "bitmap"))})
  return {
      "dataset": cfg.data.name, "model": cfg.model.name, "params": profile.total_params,
      "macs": profile.macs, "test_examples": len(teacher.setup.dataset.test),
      "story": dataclasses.asdict(story),
      "float": trained,
      "student": {
          "rules": [{"pattern": r.pattern, "weight": repr(r.weight), "act": repr(r.act)}
                    for r in student.rules],
          "epochs": student.epochs, "steps": student.steps,
          "sparsity": {"target": story.sparsity, "pruned_layers": sparsity["pruned"]["sparsity"],
                       "all_params": sparsity["total"]["sparsity"]},
      },
      "checks": {
          "prediction_mismatches": {m["name"]: m["prediction_mismatches"] for m in models[1:]},
          "max_logit_diff": max(m["max_logit_diff"] for m in models[1:]),
          "images_with_moved_logits": {m["name"]: m["images_with_moved_logits"]
                                       for m in models[1:]},
          "pruned_zero_when_served": all(masked_zero(p) for p in pruned),
          "dispatch": served["dispatch"],
      },
      "models": models,
      "layers": layers,
  }


def _write(summary: dict[str, Any]) -> None:
  """``summary.json``, ``summary.md`` and ``summary.png`` at ``summary["files"]``."""
  files = summary["files"]
  with open(files["json"], "w") as f:
    json.dump(summary, f, indent=2)
  with open(files["markdown"], "w") as f:
    f.write(markdown(summary))
  plot(summary, files["plot"])
