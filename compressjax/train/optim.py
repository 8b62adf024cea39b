"""Optimizers and learning-rate schedules built from an ``OptimConfig``.

Weight decay applies to kernels only (arrays of rank >= 2): biases and BatchNorm/LayerNorm
scales are left alone, the usual recipe for CNNs and transformers, and so are the quantizer
parameters of a compressed model (step sizes, clip levels under ``params["compressjax"]``,
labelled by :func:`compressjax.param_labels`, whatever their rank, e.g. per-channel steps
shaped like ``(1, 1, 1, C)``).
"""

from typing import Any

import jax
import optax

from compressjax.core.compress import param_labels
from compressjax.train.settings import OptimConfig


def make_schedule(cfg: OptimConfig, *, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup over ``cfg.warmup_epochs``, then cosine decay to lr * end_lr_factor (or
  constant)."""
  warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total_steps - 1, 0))
  if cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1),
                                       alpha=cfg.end_lr_factor)
  else:
    main = optax.constant_schedule(cfg.lr)
  if warmup == 0:
    return main
  ramp = optax.linear_schedule(cfg.lr / warmup, cfg.lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: arrays of rank >= 2 (kernels, embeddings) that are
  not quantizer parameters."""
  labels = param_labels(params)
  return jax.tree.map(lambda p, label: p.ndim >= 2 and label == "model", params, labels)


def make_optimizer(cfg: OptimConfig, *, total_steps: int,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD (momentum, optional Nesterov) plus L2 weight decay, or AdamW; optional clipping.

  Weight decay is masked by ``decay_mask`` in both cases.
  """
  lr = make_schedule(cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  if cfg.name == "sgd":
    parts = [optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
             optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)]
  elif cfg.name == "adamw":
    parts = [optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask)]
  else:
    raise ValueError(f"unknown optimizer {cfg.name!r}; allowed: sgd, adamw")
  if cfg.grad_clip_norm is not None:
    parts.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*parts)
