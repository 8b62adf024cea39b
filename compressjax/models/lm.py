"""A small decoder-only transformer language model (GPT-style, pre-RMSNorm, no biases).

Tokens (B, T) int -> next-token logits (B, T, vocab) float32: a token embedding plus a learned
position embedding, ``depth`` blocks of ``x + attn(norm1(x))`` and ``x + mlp(norm2(x))`` with
causal multi-head self-attention, a final RMSNorm and an output projection, either its own
``head`` or the token embedding transposed (``tie_embeddings``, via ``nn.Embed.attend``).

Sites per block: ``block{i}/attn/{query,key,value,out}`` (DenseGeneral) and
``block{i}/mlp/{fc1,fc2}`` (Dense), so the library's rules and post-training quantizers can
target them by path like the vision zoo's layers.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

EMBED_INIT = nn.initializers.normal(stddev=0.02)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention of (B, T, H, D) queries over keys/values at the same or earlier steps."""
  t = q.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, jnp.finfo(logits.dtype).min)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)


def check_config(width: int, heads: int, max_len: int, tokens: jax.Array) -> None:
  """Raises ValueError for a width not divisible by heads or a sequence longer than max_len."""
  if width % heads:
    raise ValueError(f"LM.width={width} must be divisible by heads={heads}")
  if tokens.ndim != 2 or tokens.shape[1] > max_len:
    raise ValueError(f"LM expects int tokens (batch, time) with time <= max_len={max_len}; "
                     f"got shape {tokens.shape}")


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention: DenseGeneral ``query/key/value`` (width -> heads x
  head_dim) and ``out`` (heads x head_dim -> width)."""

  width: int
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.heads, self.width // self.heads)
    q, k, v = (nn.DenseGeneral(shape, use_bias=False, name=n)(x) for n in ("query", "key", "value"))
    y = causal_attention(q, k, v)
    return nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, name="out")(y)


class Mlp(nn.Module):
  """Token MLP: ``fc1`` (width -> mlp_dim), GELU, ``fc2`` (mlp_dim -> width)."""

  width: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.gelu(nn.Dense(self.mlp_dim, use_bias=False, name="fc1")(x))
    return nn.Dense(self.width, use_bias=False, name="fc2")(x)


class Block(nn.Module):
  """Pre-RMSNorm decoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  width: int
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + CausalSelfAttention(self.width, self.heads, name="attn")(nn.RMSNorm(name="norm1")(x))
    return x + Mlp(self.width, self.mlp_dim, name="mlp")(nn.RMSNorm(name="norm2")(x))


class LM(nn.Module):
  """Decoder-only byte/token language model; see the module docstring.

  Attributes:
    vocab_size: number of token ids (256 for bytes).
    width: model (embedding) width; must be divisible by ``heads``.
    depth: number of decoder blocks.
    heads: attention heads.
    mlp_dim: hidden width of each MLP (None: 4 * width).
    max_len: longest sequence (the learned position table's length).
    tie_embeddings: output logits from the token embedding (``embed.attend``) instead of a
      separate ``head`` kernel.
  """

  vocab_size: int = 256
  width: int = 128
  depth: int = 2
  heads: int = 4
  mlp_dim: int | None = None
  max_len: int = 256
  tie_embeddings: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    """Logits (B, T, vocab_size). ``train`` is accepted for the zoo's calling convention
    (``apply(v, x, train=...)``); the model has no dropout or batch statistics."""
    del train
    check_config(self.width, self.heads, self.max_len, tokens)
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=EMBED_INIT, name="embed")
    pos = self.param("pos_embed", EMBED_INIT, (self.max_len, self.width))
    x = embed(tokens) + pos[: tokens.shape[1]]
    for i in range(self.depth):
      x = Block(self.width, self.heads, self.mlp_dim or 4 * self.width, name=f"block{i}")(x)
    x = nn.RMSNorm(name="final_norm")(x)
    if self.tie_embeddings:
      return embed.attend(x)
    return nn.Dense(self.vocab_size, use_bias=False, name="head")(x)
