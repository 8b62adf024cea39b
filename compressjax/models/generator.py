"""A small pix2pix-style image-to-image generator with CAT's inception-residual blocks.

Layout (NHWC): ``down_0_conv`` (reflect-padded 7x7, stride 1) and ``down_i_conv`` (3x3, stride 2),
each -> ``down_i_norm`` -> ReLU; inception-residual blocks ``block_i`` on the residual stream (width
= the last down width); ``up_i_conv`` (3x3 ConvTranspose, stride 2) -> ``up_i_norm`` -> ReLU;
``out`` (reflect-padded 7x7 conv) -> tanh. Each block sums parallel branches ``branch_j``,
normalises the sum and adds it to its input:

  conv k:  k x k conv (C -> w) -> norm1 -> ReLU -> 1x1 conv (w -> C)
  dw k:    1x1 conv (C -> w) -> norm1 -> ReLU -> k x k depthwise -> norm2 -> ReLU -> 1x1 (w -> C)

Every width is a constructor field, so a pruned generator is a genuinely thinner module of this
class; a branch of width 0 does not exist (no parameters, no MACs) and keeps its index in the
names (``block_0/branch_4``) so that teacher and student names line up. Every norm has a learnable
scale (gamma) whose magnitude CAT uses for pruning: BatchNorm by default (pix2pix; running
statistics in "batch_stats", used when ``train=False``) or instance norm (CycleGAN-style,
stateless; it removes each patch's mean intensity, which hurts tasks that must keep it).
Initialisation follows pix2pix/CAT: conv kernels N(0, 0.02), biases 0, norm scales N(1, 0.02).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Branch = tuple[str, int]  # (kind "conv" | "dw", kernel size)
DEFAULT_BRANCHES: tuple[Branch, ...] = (("conv", 1), ("conv", 3), ("conv", 5),
                                        ("dw", 1), ("dw", 3), ("dw", 5))
_KINDS = ("conv", "dw")
NORMS = ("batch", "instance")

_kernel_init = nn.initializers.normal(0.02)


def _scale_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _conv(features: int, kernel: int, name: str, **kw) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), kernel_init=_kernel_init, name=name, **kw)


def _norm(kind: str, train: bool, name: str) -> nn.Module:
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, scale_init=_scale_init,
                        name=name)
  return nn.InstanceNorm(scale_init=_scale_init, name=name)


def _reflect_conv(x: jax.Array, features: int, kernel: int, name: str) -> jax.Array:
  p = kernel // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  return _conv(features, kernel, name, padding="VALID")(x)


class InceptionBranch(nn.Module):
  """One branch of an inception block (see the module docstring)."""
  kind: str
  kernel: int
  width: int
  channels: int
  norm: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.kind == "conv":
      h = _conv(self.width, self.kernel, "conv1")(x)
      h = nn.relu(_norm(self.norm, train, "norm1")(h))
    else:
      h = nn.relu(_norm(self.norm, train, "norm1")(_conv(self.width, 1, "conv1")(x)))
      h = _conv(self.width, self.kernel, "dwconv", feature_group_count=self.width)(h)
      h = nn.relu(_norm(self.norm, train, "norm2")(h))
    return _conv(self.channels, 1, "conv2")(h)


class InceptionBlock(nn.Module):
  """x + norm(sum of branches(x)); with no branch left the block is the identity."""
  branches: tuple[Branch, ...]
  widths: tuple[int, ...]
  norm: str

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    outs = [InceptionBranch(kind, k, w, x.shape[-1], self.norm, name=f"branch_{j}")(x, train)
            for j, ((kind, k), w) in enumerate(zip(self.branches, self.widths)) if w > 0]
    if not outs:
      return x
    return x + _norm(self.norm, train, "norm")(sum(outs))


class Generator(nn.Module):
  """Image-to-image generator; output in [-1, 1] with ``out_channels`` channels.

  Attributes:
    out_channels: channels of the output image.
    down_widths: stem width then one width per stride-2 down-sampling conv; the last one is the
      width of the residual stream the blocks work on.
    block_widths: per block, one width per entry of ``branches`` (0 removes the branch).
    up_widths: one width per stride-2 up-sampling ConvTranspose (len(down_widths) - 1 of them).
    branches: (kind, kernel) of the branches, kind "conv" (plain) or "dw" (depthwise).
    norm: "batch" or "instance".
  """
  out_channels: int = 3
  down_widths: tuple[int, ...] = (16, 32, 64)
  block_widths: tuple[tuple[int, ...], ...] = ((64,) * 6,) * 4
  up_widths: tuple[int, ...] = (32, 16)
  branches: tuple[Branch, ...] = DEFAULT_BRANCHES
  norm: str = "batch"

  def __post_init__(self):
    _validate(self)
    super().__post_init__()

  @property
  def block_paths(self) -> tuple[str, ...]:
    """Module paths of the block outputs (CAT's distillation taps)."""
    return tuple(f"block_{i}" for i in range(len(self.block_widths)))

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    factor = 2 ** (len(self.down_widths) - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"Generator expects NHWC input with H and W divisible by {factor}, got "
                       f"shape {x.shape}")
    for i, w in enumerate(self.down_widths):
      x = self._down(x, i, w, train)
    for i, widths in enumerate(self.block_widths):
      x = InceptionBlock(self.branches, tuple(widths), self.norm, name=f"block_{i}")(x, train)
    for i, w in enumerate(self.up_widths):
      x = nn.ConvTranspose(w, (3, 3), strides=(2, 2), kernel_init=_kernel_init,
                           name=f"up_{i}_conv")(x)
      x = nn.relu(_norm(self.norm, train, f"up_{i}_norm")(x))
    return jnp.tanh(_reflect_conv(x, self.out_channels, 7, "out"))

  def _down(self, x: jax.Array, i: int, w: int, train: bool) -> jax.Array:
    if i == 0:
      x = _reflect_conv(x, w, 7, "down_0_conv")
    else:
      x = _conv(w, 3, f"down_{i}_conv", strides=(2, 2))(x)
    return nn.relu(_norm(self.norm, train, f"down_{i}_norm")(x))


def _validate(g: Generator) -> None:
  if g.norm not in NORMS:
    raise ValueError(f"Generator.norm must be one of {NORMS}, got {g.norm!r}")
  if g.out_channels < 1:
    raise ValueError(f"Generator.out_channels must be >= 1, got {g.out_channels}")
  if not g.down_widths or min(g.down_widths) < 1:
    raise ValueError(f"Generator.down_widths must be non-empty and >= 1, got {g.down_widths}")
  if len(g.up_widths) != len(g.down_widths) - 1 or (g.up_widths and min(g.up_widths) < 1):
    raise ValueError(f"Generator.up_widths needs {len(g.down_widths) - 1} widths >= 1 (one per "
                     f"down-sampling stage), got {g.up_widths}")
  for kind, k in g.branches:
    if kind not in _KINDS or k < 1 or k % 2 == 0:
      raise ValueError(f"Generator.branches entries must be (kind in {_KINDS}, odd kernel >= 1), "
                       f"got {(kind, k)}")
  for i, widths in enumerate(g.block_widths):
    if len(widths) != len(g.branches) or min(widths, default=0) < 0:
      raise ValueError(f"Generator.block_widths[{i}] needs {len(g.branches)} widths >= 0 (one per "
                       f"branch), got {widths}")


def uniform_generator(ngf: int = 16, n_blocks: int = 4, branch_width: int | None = None,
                      n_down: int = 2, out_channels: int = 3,
                      branches: tuple[Branch, ...] = DEFAULT_BRANCHES,
                      norm: str = "batch") -> Generator:
  """The usual teacher: widths ngf * 2^i going down, every branch ``branch_width`` wide
  (default: the stream width)."""
  down = tuple(ngf * 2**i for i in range(n_down + 1))
  bw = down[-1] if branch_width is None else branch_width
  return Generator(out_channels=out_channels, down_widths=down,
                   block_widths=((bw,) * len(branches),) * n_blocks,
                   up_widths=tuple(reversed(down[:-1])), branches=branches, norm=norm)
