"""Greedy generation with a KV cache for ``compressjax.models.lm.LM``, float or served.

A functional decoder over the LM's variables: one step embeds one token per sequence at
position ``pos``, runs every block on it with the keys/values of the earlier positions from a
cache ``(depth, B, max_len, heads, head_dim)``, and returns the next-token logits. The linear
layers are the model's sites: a float kernel is a plain matmul; a served one (``cj.export``'s
``served`` QArray of that site) goes through the kernel dispatcher
(``compressjax.kernels.matmul``, weight-only), so a W4A16 / W8A16 LM decodes from its packed
weights. Norms, embeddings and attention follow ``lm.LM`` (RMSNorm eps 1e-6, tanh GELU).

``step_logits`` on a whole sequence must equal ``model.apply`` (the float model, or the served
model for served variables); :func:`check_against_forward` measures it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from compressjax import kernels
from compressjax.core.tree_paths import get_path
from compressjax.models.lm import LM

Array = jax.Array
RMS_EPS = 1e-6  # flax.linen.RMSNorm's default


def linear_of(variables: dict, module: str, backend: str | None = None) -> Callable[[Array], Array]:
  """``x (B, K) -> (B, N)`` of the site ``<module>/kernel``: the served QArray through the kernel
  dispatcher if the variables have one, else the float kernel."""
  served = get_path(variables.get("served", {}), f"{module}/kernel")
  if served is not None and "weight" in served:
    q = served["weight"]
    return lambda x: kernels.matmul(x, q, backend=backend)
  w = get_path(variables["params"], f"{module}/kernel")
  if w is None:
    raise ValueError(f"no kernel or served weight for {module!r}")
  if module.endswith("/out"):
    w2 = w.reshape(-1, w.shape[-1])
  else:
    w2 = w.reshape(w.shape[0], -1)
  return lambda x: x @ w2


def _rms(x: Array, scale: Array) -> Array:
  x32 = x.astype(jnp.float32)
  return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + RMS_EPS) * scale


def empty_cache(model: LM, batch: int) -> dict[str, Array]:
  shape = (model.depth, batch, model.max_len, model.heads, model.width // model.heads)
  return {"k": jnp.zeros(shape, jnp.float32), "v": jnp.zeros(shape, jnp.float32)}


def decode_step(model: LM, variables: dict, token: Array, pos: Array, cache: dict,
                backend: str | None = None) -> tuple[Array, dict]:
  """Logits ``(B, vocab)`` after ``token`` (B,) at position ``pos``, and the updated cache."""
  params = variables["params"]
  heads, hd = model.heads, model.width // model.heads
  x = params["embed"]["embedding"][token] + params["pos_embed"][pos]
  b = token.shape[0]
  mask = jnp.arange(model.max_len) <= pos
  ks, vs = cache["k"], cache["v"]
  for i in range(model.depth):
    blk = f"block{i}"
    h = _rms(x, params[blk]["norm1"]["scale"])
    q, k, v = (linear_of(variables, f"{blk}/attn/{n}", backend)(h).reshape(b, heads, hd)
               for n in ("query", "key", "value"))
    ks = ks.at[i, :, pos].set(k)
    vs = vs.at[i, :, pos].set(v)
    logits = jnp.einsum("bhd,bkhd->bhk", q, ks[i]) / jnp.sqrt(hd).astype(q.dtype)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    att = jnp.einsum("bhk,bkhd->bhd", jax.nn.softmax(logits, axis=-1), vs[i])
    x = x + linear_of(variables, f"{blk}/attn/out", backend)(att.reshape(b, heads * hd))
    h = _rms(x, params[blk]["norm2"]["scale"])
    h = nn.gelu(linear_of(variables, f"{blk}/mlp/fc1", backend)(h))
    x = x + linear_of(variables, f"{blk}/mlp/fc2", backend)(h)
  x = _rms(x, params["final_norm"]["scale"])
  if model.tie_embeddings:
    out = x @ params["embed"]["embedding"].T
  else:
    out = linear_of(variables, "head", backend)(x)
  return out, {"k": ks, "v": vs}


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "backend"))
def generate(model: LM, variables: dict, prompt: Array, *, new_tokens: int,
             backend: str | None = None) -> tuple[Array, Array]:
  """Greedy continuation: ``(tokens (B, P + new_tokens), logits (B, P + new_tokens - 1, V))``;
  ``logits[:, t]`` predicts ``tokens[:, t + 1]``. Prefill is the same step over the prompt."""
  b, p = prompt.shape
  total = p + new_tokens
  if total > model.max_len:
    raise ValueError(f"prompt {p} + new_tokens {new_tokens} > max_len {model.max_len}")
  tokens = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)

  def body(carry, pos):
    tokens, cache = carry
    logits, cache = decode_step(model, variables, tokens[:, pos], pos, cache, backend)
    nxt = jnp.where(pos + 1 < p, tokens[:, jnp.minimum(pos + 1, total - 1)],
                    jnp.argmax(logits, axis=-1).astype(jnp.int32))
    tokens = tokens.at[:, jnp.minimum(pos + 1, total - 1)].set(nxt)
    return (tokens, cache), logits

  (tokens, _), logits = jax.lax.scan(body, (tokens, empty_cache(model, b)),
                                     jnp.arange(total - 1))
  return tokens, jnp.swapaxes(logits, 0, 1)


def check_against_forward(model: nn.Module, variables: dict, full_model: nn.Module,
                          full_variables: dict, prompt: Array, new_tokens: int) -> dict[str, Any]:
  """Generates, then runs ``full_model.apply`` on the generated sequence: the largest |logit|
  difference and whether the greedy tokens are the full forward's argmaxes."""
  tokens, logits = generate(model, variables, prompt, new_tokens=new_tokens)
  full = full_model.apply(full_variables, tokens[:, :-1])
  p = prompt.shape[1]
  return {"max_abs_logit_diff": float(jnp.max(jnp.abs(full - logits))),
          "greedy_match": bool(jnp.all(jnp.argmax(full[:, p - 1:], -1) == tokens[:, p:]))}
