"""Shared pieces of the language-model experiments: the byte corpus, batches, the jit'd AdamW
train step, test bits per byte, and the cached teacher checkpoint.

Bits per byte (bpb) is the mean next-byte cross-entropy in nats / ln 2 over every predicted
position of a split: each window of W bytes predicts its bytes 2..W from the ones before.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from compressjax.data import prepared_stdlib_text, resolve_data_dir
from compressjax.models.lm import LM

WORK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "lm")

Params = Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """An LM and how it is trained (AdamW, linear warmup then cosine decay to 0)."""

  model: LM
  steps: int
  batch_size: int = 32
  lr: float = 3e-3
  warmup: int = 100
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  seed: int = 0


def load_corpus(data_dir: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """All windows of each stdlib_text split as read-only uint8 (n, window) arrays, and the
  metadata. Decoded once per process and data directory (TFDS decodes record by record: about
  6 s, which every experiment of one process, e.g. the tests' quick runs, paid again)."""
  splits, meta = _decoded_corpus(resolve_data_dir(data_dir))
  return dict(splits), dict(meta)


@functools.lru_cache(maxsize=2)
def _decoded_corpus(data_dir: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  builder = prepared_stdlib_text(data_dir)
  splits = {}
  for split in ("train", "validation", "test"):
    source = builder.as_data_source(split=split)
    records = source.__getitems__(list(range(len(source))))  # tfds wants a Python list
    splits[split] = np.stack([r["tokens"] for r in records])
    splits[split].setflags(write=False)
  return splits, dict(builder.info.metadata)


def batches(tokens: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
  """Endless int32 batches of windows, each epoch a fresh seeded shuffle (last partial batch
  dropped)."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(tokens))
    for i in range(0, len(order) - batch_size + 1, batch_size):
      yield tokens[order[i:i + batch_size]].astype(np.int32)


def token_nats(model: nn.Module, params: Params, tokens: jax.Array) -> jax.Array:
  """Next-token cross-entropy in nats (B, W - 1) of each predicted position."""
  return variables_nats(model, {"params": params}, tokens)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW (decay on matrices only) with warmup-cosine schedule and global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, cfg.steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                     optax.adamw(schedule, b2=0.99, weight_decay=cfg.weight_decay,
                                 mask=decay_mask))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation):
  """``step(params, opt_state, tokens) -> (params, opt_state, loss)``, jit-compiled."""

  @jax.jit
  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(lambda p: token_nats(model, p, tokens).mean())(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def bits_per_byte(model: nn.Module, params: Params, tokens: np.ndarray,
                  batch_size: int = 128) -> float:
  """Mean next-byte cross-entropy over all windows of ``tokens``, in bits."""
  return variables_bpb(model, {"params": params}, tokens, batch_size)


def train(cfg: TrainConfig, train_tokens: np.ndarray) -> tuple[Params, list[dict[str, float]]]:
  """Trains ``cfg.model``; returns params and a history of the train bpb (20 points, each the
  mean over the steps since the previous one) with wall and process CPU seconds (the CPU time
  is the honest cost on a shared machine)."""
  model = cfg.model
  example = jnp.zeros((1, train_tokens.shape[1] - 1), jnp.int32)
  params = model.init(jax.random.key(cfg.seed), example)["params"]
  tx = optimizer(cfg)
  opt_state, step = tx.init(params), make_train_step(model, tx)
  history, losses, start, cpu_start = [], [], time.time(), time.process_time()
  for i, tokens in zip(range(1, cfg.steps + 1), batches(train_tokens, cfg.batch_size, cfg.seed)):
    params, opt_state, loss = step(params, opt_state, tokens)
    losses.append(loss)
    if i % max(1, cfg.steps // 20) == 0 or i == cfg.steps:
      history.append({"step": i, "train_bpb": float(np.mean(losses)) / math.log(2),
                      "seconds": round(time.time() - start, 1),
                      "cpu_seconds": round(time.process_time() - cpu_start, 1)})
      print(f"step {i}: train bpb {history[-1]['train_bpb']:.3f} "
            f"({history[-1]['seconds']:.0f} s, CPU {history[-1]['cpu_seconds']:.0f} s)",
            flush=True)
      losses = []
  return params, history


def param_count(params: Params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def save_teacher(name: str, model: LM, params: Params, info: dict[str, Any],
                 work_dir: str = WORK_DIR) -> str:
  """Writes ``<name>.msgpack`` (flax.serialization) and ``<name>.json`` (the LM's fields and
  ``info``) under ``work_dir``; returns the checkpoint path."""
  os.makedirs(work_dir, exist_ok=True)
  path = os.path.join(work_dir, f"{name}.msgpack")
  with open(path, "wb") as f:
    f.write(serialization.to_bytes(params))
  with open(os.path.join(work_dir, f"{name}.json"), "w") as f:
    json.dump({"model": model_fields(model), **info}, f, indent=2)
  return path


def load_teacher(name: str, work_dir: str = WORK_DIR) -> tuple[LM, Params, dict[str, Any]] | None:
  """The cached teacher ``(model, params, info)``, or None when it was never trained."""
  path = os.path.join(work_dir, f"{name}.msgpack")
  if not os.path.exists(path):
    return None
  with open(os.path.join(work_dir, f"{name}.json")) as f:
    info = json.load(f)
  with open(path, "rb") as f:
    params = jax.tree.map(jnp.asarray, serialization.msgpack_restore(f.read()))
  return LM(**info.pop("model")), params, info


def model_fields(model: LM) -> dict[str, Any]:
  """The LM's constructor fields (its dataclass fields less Linen's parent/name)."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.name not in ("parent", "name")}


# --- compressed / served models (variables with more than "params") --------------------------


def variables_nats(model: nn.Module, variables: dict, tokens: jax.Array) -> jax.Array:
  """Next-token cross-entropy in nats (B, W - 1) of a model applied to full ``variables``
  (compressed: ``quant_stats``; served: ``served``)."""
  logits = model.apply(variables, tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


@functools.partial(jax.jit, static_argnums=0)
def _sum_nats(model: nn.Module, variables: dict, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Summed cross-entropy (nats) of the windows where ``mask``; jit-cached per model."""
  return jnp.sum(variables_nats(model, variables, tokens).sum(axis=1) * mask)


def variables_bpb(model: nn.Module, variables: dict, tokens: np.ndarray,
                  batch_size: int = 128) -> float:
  """:func:`bits_per_byte` of ``model.apply(variables, ...)`` (compressed or served models).

  Batches of ``min(batch_size, len(tokens))`` windows, the last one padded and masked, so
  each model compiles one shape."""
  batch_size = min(batch_size, len(tokens))
  total = 0.0
  for i in range(0, len(tokens), batch_size):
    chunk = tokens[i:i + batch_size].astype(np.int32)
    mask = np.arange(batch_size) < len(chunk)
    chunk = np.pad(chunk, ((0, batch_size - len(chunk)), (0, 0)))
    total += float(_sum_nats(model, variables, chunk, mask))
  return total / (len(tokens) * (tokens.shape[1] - 1)) / math.log(2)


def saved_rows(path: str, cfg: Any, sweep: tuple[str, ...],
               key: Callable[[dict], tuple]) -> dict[tuple, dict]:
  """The rows of an earlier (possibly partial) run's JSON at ``path``, keyed by ``key``, when its
  config equals the dataclass ``cfg`` except in the ``sweep`` fields; empty otherwise (with a
  message when the file exists)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    earlier = json.load(f)
  current = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, like the file
  if ({k: v for k, v in earlier["config"].items() if k not in sweep}
      != {k: v for k, v in current.items() if k not in sweep}):
    print(f"not resuming from {path}: its config differs", flush=True)
    return {}
  return {key(r): r for r in earlier["rows"]}


def require_teacher(name: str) -> tuple[LM, Params, dict[str, Any]]:
  """The cached teacher, or SystemExit telling how to train it."""
  cached = load_teacher(name)
  if cached is None:
    quick = " --quick" if name.endswith("_quick") else ""
    raise SystemExit(f"no cached teacher {name!r} in {WORK_DIR}; run "
                     f"`python -m experiments.lm_teacher{quick}` first")
  return cached
