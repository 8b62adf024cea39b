"""NNX twins of the zoo's CNN, ResNet and ViT: the same layers, names and parameter shapes.

Attribute paths equal the Linen module paths (``conv0/kernel``, ``stage1/block0/bn1/mean``), so
:func:`load_linen` copies a Linen model's ``params`` and ``batch_stats`` into the twin and both
compute the same function. Train/eval mode is NNX's: ``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from compressjax.models.layers import BN_EPSILON, BN_MOMENTUM


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _conv(cin: int, cout: int, kernel: int, strides: int, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(cin, cout, (kernel, kernel), strides=strides, padding="SAME", use_bias=False,
                  rngs=rngs)


class CNN(nnx.Module):
  """:class:`compressjax.models.CNN` in NNX (``in_channels`` is explicit: NNX layers are eager)."""

  def __init__(self, *, in_channels: int = 1, widths: Sequence[int] = (32, 64), hidden: int = 128,
               num_classes: int = 10, image_size: int = 8, rngs: nnx.Rngs):
    self.widths = tuple(widths)
    cin, size = in_channels, image_size
    for i, width in enumerate(self.widths):
      setattr(self, f"conv{i}", _conv(cin, width, 3, 1, rngs))
      setattr(self, f"bn{i}", _bn(width, rngs))
      cin, size = width, -(-size // 2)
    self.hidden = nnx.Linear(cin * size * size, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(len(self.widths)):
      x = nnx.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
      x = _max_pool(x)
    x = x.reshape((x.shape[0], -1))
    return self.head(nnx.relu(self.hidden(x)))


def _max_pool(x):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class ConvBN(nnx.Module):

  def __init__(self, cin: int, cout: int, kernel: int, strides: int, rngs: nnx.Rngs):
    self.conv = _conv(cin, cout, kernel, strides, rngs)
    self.bn = _bn(cout, rngs)

  def __call__(self, x):
    return self.bn(self.conv(x))


class BasicBlock(nnx.Module):

  def __init__(self, cin: int, width: int, inner: int, strides: int, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, inner, 3, strides, rngs)
    self.bn1 = _bn(inner, rngs)
    self.conv2 = _conv(inner, width, 3, 1, rngs)
    self.bn2 = _bn(width, rngs)
    self.project = strides != 1 or cin != width
    if self.project:
      self.shortcut = ConvBN(cin, width, 1, strides, rngs)

  def __call__(self, x):
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return nnx.relu(y + (self.shortcut(x) if self.project else x))


class ResNet(nnx.Module):
  """:class:`compressjax.models.ResNet` in NNX (defaults: ResNet-20)."""

  def __init__(self, *, in_channels: int = 3, num_classes: int = 10,
               stage_widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 3,
               stem_width: int = 16, rngs: nnx.Rngs):
    self.stem = ConvBN(in_channels, stem_width, 3, 1, rngs)
    self.layout = tuple((s, b) for s in range(len(stage_widths)) for b in range(blocks_per_stage))
    cin = stem_width
    for s, width in enumerate(stage_widths):
      stage = nnx.Module()
      for b in range(blocks_per_stage):
        setattr(stage, f"block{b}", BasicBlock(cin, width, width, 2 if s and not b else 1, rngs))
        cin = width
      setattr(self, f"stage{s + 1}", stage)
    self.head = nnx.Linear(cin, num_classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    for s, b in self.layout:
      x = getattr(getattr(self, f"stage{s + 1}"), f"block{b}")(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


class MlpBlock(nnx.Module):
  """:class:`compressjax.models.vit.MlpBlock` in NNX (``fc1``, GELU, ``fc2`` as ``nnx.Einsum``)."""

  def __init__(self, hidden: int, mlp_dim: int, dropout_rate: float, rngs: nnx.Rngs):
    self.fc1 = nnx.Einsum("btd,dh->bth", (hidden, mlp_dim), (mlp_dim,), rngs=rngs)
    self.fc2 = nnx.Einsum("bth,hd->btd", (mlp_dim, hidden), (hidden,), rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x):
    return self.dropout(self.fc2(self.dropout(nnx.gelu(self.fc1(x)))))


class EncoderBlock(nnx.Module):
  """:class:`compressjax.models.vit.EncoderBlock` in NNX (pre-LN attention and MLP)."""

  def __init__(self, hidden: int, heads: int, mlp_dim: int, dropout_rate: float,
               rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(hidden, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, hidden, dropout_rate=dropout_rate, decode=False,
                                       rngs=rngs)
    self.ln2 = nnx.LayerNorm(hidden, rngs=rngs)
    self.mlp = MlpBlock(hidden, mlp_dim, dropout_rate, rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x):
    x = x + self.dropout(self.attn(self.ln1(x)))
    return x + self.mlp(self.ln2(x))


class ViT(nnx.Module):
  """:class:`compressjax.models.ViT` in NNX (``image_size`` is explicit: it sizes
  ``pos_embedding``)."""

  def __init__(self, *, in_channels: int = 1, num_classes: int = 10, hidden: int = 64,
               depth: int = 2, heads: int = 4, mlp_dim: int = 128, patch_size: int = 4,
               image_size: int = 8, dropout_rate: float = 0.0, rngs: nnx.Rngs):
    if hidden % heads:
      raise ValueError(f"ViT.hidden={hidden} must be divisible by heads={heads}")
    if image_size % patch_size:
      raise ValueError(f"ViT: image_size={image_size} must be divisible by "
                       f"patch_size={patch_size}")
    p = patch_size
    self.patch_embed = nnx.Conv(in_channels, hidden, (p, p), strides=p, padding="VALID",
                                rngs=rngs)
    tokens = (image_size // p) ** 2 + 1
    self.cls_token = nnx.Param(jnp.zeros((1, 1, hidden)))
    self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, hidden)))
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.depth = depth
    for i in range(depth):
      setattr(self, f"block{i}", EncoderBlock(hidden, heads, mlp_dim, dropout_rate, rngs))
    self.final_ln = nnx.LayerNorm(hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    x = self.patch_embed(x)
    b, hidden = x.shape[0], x.shape[-1]
    x = x.reshape((b, -1, hidden))
    x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, hidden)), x], axis=1)
    x = self.dropout(x + self.pos_embedding[...])
    for i in range(self.depth):
      x = getattr(self, f"block{i}")(x)
    return self.head(self.final_ln(x)[:, 0])


def load_linen(model: nnx.Module, variables: dict) -> nnx.Module:
  """Copies a Linen twin's ``params`` and ``batch_stats`` into ``model`` (same paths), in place.

  Raises ValueError naming the first path that is missing or has another shape.
  """
  from compressjax.core.tree_paths import flat_paths, get_path  # pylint: disable=g-import-not-at-top

  state = nnx.state(model, (nnx.Param, nnx.BatchStat))  # a tuple filter: either kind
  values = []
  for path, leaf in flat_paths(state):
    source = get_path(variables.get("params", {}), path)
    if source is None:
      source = get_path(variables.get("batch_stats", {}), path)
    if source is None or tuple(source.shape) != tuple(leaf.shape):
      got = None if source is None else tuple(source.shape)
      raise ValueError(f"load_linen: {path!r} of shape {tuple(leaf.shape)} has no Linen "
                       f"counterpart of that shape (found {got})")
    values.append(jnp.asarray(source))
  nnx.update(model, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state), values))
  return model
