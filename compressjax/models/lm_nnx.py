"""The decoder-only LM of ``lm.py`` in Flax NNX, with the same parameter names and shapes.

Attribute paths mirror the Linen module's (``block0/attn/query/kernel``, ``embed/embedding``,
``pos_embed``...), so :func:`load_linen_params` copies a trained Linen teacher into the NNX
model unchanged and both give the same logits. The attention math is ``lm.causal_attention``.
"""

import jax
import jax.numpy as jnp
from flax import nnx
from flax.traverse_util import flatten_dict

from compressjax.models.lm import EMBED_INIT, LM, causal_attention, check_config


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention, as ``lm.CausalSelfAttention``."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    shape = (heads, width // heads)
    self.query = nnx.LinearGeneral(width, shape, use_bias=False, rngs=rngs)
    self.key = nnx.LinearGeneral(width, shape, use_bias=False, rngs=rngs)
    self.value = nnx.LinearGeneral(width, shape, use_bias=False, rngs=rngs)
    self.out = nnx.LinearGeneral(shape, width, axis=(-2, -1), use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(causal_attention(self.query(x), self.key(x), self.value(x)))


class Mlp(nnx.Module):
  """Token MLP, as ``lm.Mlp``."""

  def __init__(self, width: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(width, mlp_dim, use_bias=False, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, width, use_bias=False, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.gelu(self.fc1(x)))


class Block(nnx.Module):
  """Pre-RMSNorm decoder block, as ``lm.Block``."""

  def __init__(self, width: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.RMSNorm(width, rngs=rngs)
    self.attn = CausalSelfAttention(width, heads, rngs=rngs)
    self.norm2 = nnx.RMSNorm(width, rngs=rngs)
    self.mlp = Mlp(width, mlp_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class NnxLM(nnx.Module):
  """NNX decoder-only LM; the arguments are ``lm.LM``'s fields (see there)."""

  def __init__(self, vocab_size: int = 256, width: int = 128, depth: int = 2, heads: int = 4,
               mlp_dim: int | None = None, max_len: int = 256, tie_embeddings: bool = False, *,
               rngs: nnx.Rngs):
    check_config(width, heads, max_len, jnp.zeros((1, 1), jnp.int32))
    self.width, self.heads, self.max_len, self.depth = width, heads, max_len, depth
    self.embed = nnx.Embed(vocab_size, width, embedding_init=EMBED_INIT, rngs=rngs)
    self.pos_embed = nnx.Param(EMBED_INIT(rngs.params(), (max_len, width)))
    for i in range(depth):  # block0, block1, ...: the Linen module's names
      setattr(self, f"block{i}", Block(width, heads, mlp_dim or 4 * width, rngs=rngs))
    self.final_norm = nnx.RMSNorm(width, rngs=rngs)
    self.head = None if tie_embeddings else nnx.Linear(width, vocab_size, use_bias=False,
                                                       rngs=rngs)

  @classmethod
  def from_linen(cls, module: LM, *, rngs: nnx.Rngs) -> "NnxLM":
    """An NNX model with the same configuration as the Linen ``module``."""
    return cls(module.vocab_size, module.width, module.depth, module.heads, module.mlp_dim,
               module.max_len, module.tie_embeddings, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits (B, T, vocab_size)."""
    check_config(self.width, self.heads, self.max_len, tokens)
    x = self.embed(tokens) + self.pos_embed[: tokens.shape[1]]
    for i in range(self.depth):
      x = getattr(self, f"block{i}")(x)
    x = self.final_norm(x)
    return self.embed.attend(x) if self.head is None else self.head(x)


def load_linen_params(model: NnxLM, params: dict) -> NnxLM:
  """Copies Linen ``LM`` params (the ``"params"`` collection) into ``model`` in place.

  Raises ValueError when the parameter names or shapes differ (a different configuration).
  """
  state = nnx.state(model, nnx.Param)
  want, got = (flatten_dict(jax.tree.map(jnp.shape, t), sep="/")
               for t in (nnx.to_pure_dict(state), params))
  if diff := sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k)):
    raise ValueError("load_linen_params: the Linen params do not fit the NNX model at " + ", ".join(
        f"{k} (Linen {got.get(k)}, NNX {want.get(k)})" for k in diff[:3]))
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model
