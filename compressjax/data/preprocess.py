"""Image preprocessing on numpy arrays: resize, per-channel statistics, normalisation.

Runs on the host (numpy/PIL) before batches reach the accelerator, so it works the same for
in-memory arrays and for examples read lazily from a tfds data source.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_images(images: np.ndarray | Sequence[np.ndarray], size: int) -> np.ndarray:
  """Bilinearly resizes HWC images (one array NHWC or a list of any sizes) to ``size x size``.

  Each channel is resized as a float image, so small integer ranges (digits: 0..16) keep their
  precision. Returns float32 NHWC.
  """
  if size < 1:
    raise ValueError(f"image_size must be a positive int, got {size}")
  out = np.empty((len(images), size, size, np.shape(images[0])[-1]), np.float32)
  for i, image in enumerate(images):
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (size, size):
      out[i] = image
      continue
    for c in range(image.shape[-1]):
      channel = Image.fromarray(image[..., c], mode="F")
      out[i, ..., c] = np.asarray(channel.resize((size, size), Image.Resampling.BILINEAR))
  return out


def stack_images(images: Sequence[np.ndarray], image_size: int | None) -> np.ndarray:
  """Stacks HWC images into float32 NHWC, resizing when ``image_size`` is given."""
  if image_size is not None:
    return resize_images(images, image_size)
  shapes = {np.shape(im) for im in images}
  if len(shapes) > 1:
    raise ValueError(f"images have different shapes {sorted(shapes)[:3]}...; pass image_size")
  return np.stack(images).astype(np.float32)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (float32, shape (C,)) of NHWC images; std is floored at 1e-6."""
  mean = images.mean(axis=(0, 1, 2), dtype=np.float64)
  std = images.std(axis=(0, 1, 2), dtype=np.float64)
  return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """(images - mean) / std per channel, as float32."""
  return ((images - mean) / std).astype(np.float32)
