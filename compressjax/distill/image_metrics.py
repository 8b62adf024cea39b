"""PSNR and SSIM for batches of NHWC images, in jnp (jit-able, used to evaluate generators).

SSIM follows Wang et al. (2004): an 11x11 Gaussian window (sigma 1.5), population covariances,
K1 = 0.01, K2 = 0.03, averaged over the positions whose window fits inside the image and over
channels; this equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, channel_axis=-1)``.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _check(a: jax.Array, b: jax.Array) -> None:
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f"images must be NHWC of the same shape, got {a.shape} and {b.shape}")


def psnr(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Per-image PSNR in dB, (B,); ``data_range`` is max - min of the scale (2 for [-1, 1])."""
  _check(a, b)
  mse = jnp.mean((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, 1e-12))


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _filter(x: jax.Array, w: jax.Array) -> jax.Array:
  """Separable VALID Gaussian filter of every channel of (B, H, W, C)."""
  c = x.shape[-1]
  k = w.shape[0]
  dn = ("NHWC", "HWIO", "NHWC")
  kh = jnp.tile(w.reshape(k, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(w.reshape(1, k, 1, 1), (1, 1, 1, c))
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c)


def ssim(a: jax.Array, b: jax.Array, data_range: float = 2.0) -> jax.Array:
  """Per-image mean structural similarity, (B,)."""
  _check(a, b)
  w = jnp.asarray(_gaussian_window())
  if min(a.shape[1:3]) < w.shape[0]:
    raise ValueError(f"SSIM needs images of at least {w.shape[0]}x{w.shape[0]}, got {a.shape}")
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  ux, uy = _filter(a, w), _filter(b, w)
  vx = _filter(a * a, w) - ux * ux
  vy = _filter(b * b, w) - uy * uy
  vxy = _filter(a * b, w) - ux * uy
  c1 = (0.01 * data_range) ** 2
  c2 = (0.03 * data_range) ** 2
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))
