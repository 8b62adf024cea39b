"""Training-time augmentation of normalised NHWC numpy batches.

An ``Augment`` is ``f(rng, images) -> images`` with an explicit numpy Generator, so the batch
iterator can seed it from (seed, epoch, batch) and a resumed run sees the same pixels.
"""

import numpy as np

from compressjax.train.batching import Augment


def flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
  """Flips each image horizontally with probability 1/2."""
  mask = rng.random(len(images)) < 0.5
  return np.where(mask[:, None, None, None], images[:, :, ::-1], images)


def crop_flip(pad: int = 4) -> Augment:
  """Random ``pad``-pixel shifted crop (zero padding, i.e. the mean pixel) then a random flip.

  The CIFAR recipe of ResNet papers: pad 4, crop back to the original size.
  """
  if pad < 0:
    raise ValueError(f"crop_flip pad must be >= 0, got {pad}")

  def apply(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    cropped = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return flip(rng, cropped)

  return apply


AUGMENTS: dict[str, Augment | None] = {"none": None, "flip": flip, "crop_flip": crop_flip(4)}


def get_augment(name: str) -> Augment | None:
  """Looks up an augmentation by name ("none", "flip", "crop_flip")."""
  if name not in AUGMENTS:
    raise ValueError(f"unknown augment {name!r}; allowed: {', '.join(AUGMENTS)}")
  return AUGMENTS[name]
