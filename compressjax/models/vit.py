"""A small Vision Transformer (Dosovitskiy et al. 2021) with pre-LN encoder blocks."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class MlpBlock(nn.Module):
  """Token MLP written with nn.Einsum (``fc1``, GELU, ``fc2``), so Einsum sites are exercised."""

  hidden: int
  mlp_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Einsum((self.hidden, self.mlp_dim), "btd,dh->bth", name="fc1")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.gelu(x))
    x = nn.Einsum((self.mlp_dim, self.hidden), "bth,hd->btd", name="fc2")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class EncoderBlock(nn.Module):
  """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  hidden: int
  heads: int
  mlp_dim: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = nn.LayerNorm(name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, dropout_rate=self.dropout_rate, deterministic=not train, name="attn"
    )(y, y)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.LayerNorm(name="ln2")(x)
    return x + MlpBlock(self.hidden, self.mlp_dim, self.dropout_rate, name="mlp")(y, train)


class ViT(nn.Module):
  """ViT classifier: ``patch_embed`` (Conv, stride = patch), a learned ``cls_token`` and
  ``pos_embedding``, ``block0..`` encoder blocks, ``final_ln`` and a Dense ``head`` on the
  class token.

  Sites per block: ``block{i}/attn/{query,key,value,out}`` (DenseGeneral) and
  ``block{i}/mlp/{fc1,fc2}`` (Einsum).

  Attributes:
    num_classes: number of output logits.
    hidden: token width (must be divisible by ``heads``).
    depth: number of encoder blocks.
    heads: attention heads.
    mlp_dim: hidden width of each token MLP.
    patch_size: side of the square patches (must divide the image height and width).
    dropout_rate: dropout on attention weights and residual branches (uses the "dropout" rng).
  """

  num_classes: int = 10
  hidden: int = 64
  depth: int = 2
  heads: int = 4
  mlp_dim: int = 128
  patch_size: int = 4
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    p = self.patch_size
    if x.ndim != 4 or x.shape[1] % p or x.shape[2] % p:
      raise ValueError(
          f"ViT expects NHWC images whose height and width are divisible by patch_size={p}; "
          f"got shape {x.shape}"
      )
    if self.hidden % self.heads:
      raise ValueError(f"ViT.hidden={self.hidden} must be divisible by heads={self.heads}")
    x = nn.Conv(self.hidden, (p, p), strides=p, padding="VALID", name="patch_embed")(x)
    x = x.reshape((x.shape[0], -1, self.hidden))
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.hidden))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.hidden)), x], axis=1)
    pos = self.param(
        "pos_embedding", nn.initializers.normal(stddev=0.02), (1, x.shape[1], self.hidden)
    )
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos)
    for i in range(self.depth):
      x = EncoderBlock(self.hidden, self.heads, self.mlp_dim, self.dropout_rate, name=f"block{i}")(
          x, train
      )
    x = nn.LayerNorm(name="final_ln")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])
