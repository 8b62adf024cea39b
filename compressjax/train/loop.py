"""``fit``: the resumable training loop shared by every method.

It knows nothing of the model or loss: it drives a ``train_step(state, batch)``, evaluates
with an ``eval_step``, logs JSON lines, shows a progress bar and checkpoints with orbax. The
data position is a function of the step (epoch = step // steps_per_epoch), and batch order
and augmentation depend only on (seed, epoch, batch), so a run killed and restarted in the
same workdir ends with bit-identical parameters.

It runs on the device mesh of ``cfg.mesh``: the state is sharded by
:mod:`compressjax.train.sharding`, each process reads its rows of every batch, a background
thread places them on the devices ahead of the step (``cfg.prefetch``), and the step is
compiled with the state's shardings pinned on input and output (the old state is donated).
On one device this computes exactly what the step alone would.
"""

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from compressjax.train.batching import Augment, Split, steps_per_epoch
from compressjax.train.checkpoint import Checkpoints
from compressjax.train.evaluate import evaluate
from compressjax.train.global_batches import to_global, train_batches
from compressjax.train.mesh import make_mesh
from compressjax.train.metrics_log import MetricsLog
from compressjax.train.prefetch import prefetch
from compressjax.train.settings import TrainConfig
from compressjax.train.sharding import (batch_sharding, check_batch_size, replicated,
                                        state_shardings)
from compressjax.train.state import TrainState
from compressjax.train.steps import EvalStep, TrainStep


@dataclasses.dataclass(frozen=True)
class FitResult:
  """The final state, the last evaluation (empty without eval data) and where it started."""

  state: TrainState
  eval_metrics: dict[str, float]
  start_step: int
  total_steps: int


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
  """Steps of a run: ``cfg.steps`` if set, else epochs x steps per epoch."""
  return cfg.steps or cfg.epochs * steps_per_epoch(num_examples, cfg.batch_size)


def fit(
    state: TrainState,
    train_step: TrainStep,
    train_data: Split,
    cfg: TrainConfig,
    *,
    workdir: str,
    eval_step: EvalStep | None = None,
    eval_data: Split | None = None,
    augment: Augment | None = None,
    stop_after_steps: int | None = None,
) -> FitResult:
  """Trains ``state`` with ``train_step`` for ``cfg.steps`` or ``cfg.epochs``, resuming from the
  latest checkpoint in ``workdir`` if there is one.

  Args:
    state: the initial state (on any device: it is copied onto the mesh; on several hosts a
      state of global arrays, e.g. from ``setup``); also the target a checkpoint is restored
      into, whatever mesh it was saved from.
    train_step: ``step(state, batch) -> (state, metrics)``, e.g. from ``make_train_step``.
    train_data: training split; batches are ``{"image", "label"}`` dicts.
    cfg: loop settings (length, batch size, seed, eval/checkpoint/log intervals, mesh,
      prefetch depth).
    workdir: where checkpoints and metrics.jsonl go.
    eval_step, eval_data: evaluation, every ``cfg.eval_every_epochs``/``eval_every_steps``
      and at the end.
    augment: training augmentation.
    stop_after_steps: stop once the global step reaches this, without a final checkpoint
      (simulates a killed run; for tests).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  spe = steps_per_epoch(len(train_data), cfg.batch_size)
  total = total_steps(cfg, len(train_data))
  mesh = make_mesh(cfg.mesh)
  check_batch_size(cfg.batch_size, mesh)
  shardings = state_shardings(state, mesh, cfg.mesh.fsdp_min_size)
  # The compiled step donates its input: work on a copy, never on the caller's arrays
  # (device_put alone may reuse a buffer for one of the shards, even with may_alias=False).
  state = jax.device_put(jax.tree.map(jnp.copy, state), shardings)
  run_meta = {"steps_per_epoch": spe, "total_steps": total, "batch_size": cfg.batch_size,
              "seed": cfg.seed}
  checkpoints = Checkpoints(workdir, max_to_keep=cfg.max_to_keep)
  if checkpoints.latest_step() is not None:
    state, meta = checkpoints.restore(state)  # onto this mesh, whatever it was saved from
    _check_same_run(meta, run_meta, checkpoints.directory)
  start = int(state.step)
  primary = jax.process_index() == 0
  log = MetricsLog(workdir, resume_step=start) if primary else None
  write = log.write if log else lambda record: None
  do_eval = eval_step is not None and eval_data is not None
  ckpt_every = cfg.checkpoint_every_steps or spe
  step_fn = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                    out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
  if do_eval:
    eval_fn = jax.jit(eval_step, out_shardings=replicated(mesh))
    run_eval = lambda state: evaluate(eval_fn, state, eval_data, cfg.batch_size, mesh=mesh)
  progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
  bar = tqdm.tqdm(total=total, initial=start, disable=not (progress and primary),
                  dynamic_ncols=True, desc="train")
  t0, pending, eval_metrics = time.time(), [], {}
  step = start
  local = train_batches(train_data, cfg.batch_size, seed=cfg.seed, start_step=start,
                        steps_per_epoch=spe, augment=augment)
  put = lambda batch: to_global(batch, mesh, cfg.batch_size)
  try:
    with contextlib.closing(prefetch(local, cfg.prefetch, put)) as stream:
      for batch in () if step in (total, stop_after_steps) else stream:
        state, metrics = step_fn(state, batch)
        pending.append(metrics)
        step += 1
        bar.update(1)
        end_of_epoch = step % spe == 0
        if step % cfg.log_every_steps == 0 or end_of_epoch or step == total:
          record = _mean(pending)
          pending = []
          bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()})
          write(_record("train", step, spe, t0, record))
        if do_eval and (step == total or _eval_due(cfg, step, spe)):
          eval_metrics = run_eval(state)
          write(_record("eval", step, spe, t0, eval_metrics))
        if step % ckpt_every == 0 or step == total:
          checkpoints.save(state, {**run_meta, "step": step, "epoch": step // spe,
                                   "batch": step % spe})
        if step in (total, stop_after_steps):
          break
    if do_eval and not eval_metrics and step == total:  # finished run restarted: just evaluate
      eval_metrics = run_eval(state)
  finally:
    bar.close()
    checkpoints.wait()
    checkpoints.close()
  return FitResult(state, eval_metrics, start, total)


def _eval_due(cfg: TrainConfig, step: int, spe: int) -> bool:
  by_steps = cfg.eval_every_steps is not None and step % cfg.eval_every_steps == 0
  by_epochs = (cfg.eval_every_epochs is not None and step % spe == 0
               and (step // spe) % cfg.eval_every_epochs == 0)
  return by_steps or by_epochs


def _mean(metrics: list[dict[str, Any]]) -> dict[str, float]:
  metrics = jax.device_get(metrics)
  return {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}


def _record(split: str, step: int, spe: int, t0: float, metrics: dict[str, float]) -> dict:
  return {"split": split, "step": step, "epoch": step / spe, **metrics,
          "elapsed_s": round(time.time() - t0, 3)}


def _check_same_run(saved: dict, current: dict, where: str) -> None:
  """A resumed run must iterate the data the same way, or batches would not line up."""
  diffs = [f"{k}={saved.get(k)} (now {v})" for k, v in current.items() if saved.get(k) != v]
  if diffs:
    raise ValueError(f"cannot resume from {where}: it was saved with {', '.join(diffs)}; "
                     "use a new workdir or the same settings")
