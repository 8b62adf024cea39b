"""Paired image-to-image data from the sample images bundled with scikit-image (offline).

Three tasks map an input to an RGB target: ``"gray2rgb"`` (colourisation, one-channel input),
``"edges2rgb"`` (Canny edges of the grey image, one channel) and ``"denoise"`` (the RGB image
plus Gaussian noise of sd ``NOISE_SD`` of the [0, 1] range, clipped: a task whose input is a
fair baseline that a network can beat by several dB). Training pairs are random patches (with
random horizontal flips) of the training images, each patch with its own noise; evaluation uses
the centre square of *other* images (noise seeded by the image's name), so no test pixel is
ever seen in training. Every image is first resized so its short side is ``short_side`` pixels.
Inputs and targets are float32 NHWC in [-1, 1] (the generator's tanh range).
"""

import dataclasses
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import skimage.data
import skimage.feature
from skimage.color import rgb2gray
from skimage.transform import resize

from compressjax.train.batching import epoch_order

TASKS = ("gray2rgb", "edges2rgb", "denoise")
NOISE_SD = 0.1  # "denoise": 25.5 / 255, the usual benchmark level
# RGB images that skimage ships inside its wheel (no download). "cat" is "chelsea" again.
TRAIN_IMAGES = ("astronaut", "rocket", "motorcycle", "immunohistochemistry", "retina",
                "hubble_deep_field")
TEST_IMAGES = ("chelsea", "coffee")
_LOADERS = {
    "astronaut": skimage.data.astronaut, "rocket": skimage.data.rocket,
    "immunohistochemistry": skimage.data.immunohistochemistry, "retina": skimage.data.retina,
    "hubble_deep_field": skimage.data.hubble_deep_field, "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee, "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
}


@dataclasses.dataclass(frozen=True)
class ImagePairs:
  """inputs (N, H, W, C) (C = 1, or 3 for "denoise") and targets (N, H, W, 3), float32 in
  [-1, 1]."""
  inputs: np.ndarray
  targets: np.ndarray

  def __len__(self) -> int:
    return len(self.inputs)


def load_rgb(name: str, short_side: int = 128) -> np.ndarray:
  """A bundled image as float32 RGB in [0, 1], resized (anti-aliased) to the given short side."""
  if name not in _LOADERS:
    raise ValueError(f"unknown image {name!r}; available: {sorted(_LOADERS)}")
  if short_side < 8:
    raise ValueError(f"short_side must be >= 8, got {short_side}")
  img = np.asarray(_LOADERS[name](), np.float32)[..., :3] / 255.0
  h, w = img.shape[:2]
  scale = short_side / min(h, w)
  size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
  return np.clip(resize(img, size, anti_aliasing=True), 0.0, 1.0).astype(np.float32)


def task_input(task: str, rgb: np.ndarray, rng: np.random.Generator | None = None
               ) -> np.ndarray:
  """The input of ``task`` for an RGB image in [0, 1], in [-1, 1] (HWC); "denoise" draws its
  noise from ``rng``."""
  if task == "denoise":
    if rng is None:
      raise ValueError('task "denoise" needs an rng for its noise')
    x = np.clip(rgb + NOISE_SD * rng.standard_normal(rgb.shape), 0.0, 1.0)
  elif task == "gray2rgb":
    x = rgb2gray(rgb)[..., None]
  elif task == "edges2rgb":
    x = skimage.feature.canny(rgb2gray(rgb), sigma=1.5).astype(np.float32)[..., None]
  else:
    raise ValueError(f"unknown task {task!r}; available: {TASKS}")
  return (2.0 * x - 1.0).astype(np.float32)


def train_patches(task: str, num_patches: int, patch_size: int = 32, seed: int = 0,
                  images: Sequence[str] = TRAIN_IMAGES, short_side: int = 128) -> ImagePairs:
  """``num_patches`` random (flipped with p=0.5) patches, spread evenly over ``images``."""
  if patch_size > short_side:
    raise ValueError(f"patch_size {patch_size} exceeds short_side {short_side}")
  rng = np.random.default_rng(seed)
  per_patch = task == "denoise"  # fresh noise for every patch
  xs, ys = [], []
  for i, name in enumerate(images):
    rgb = load_rgb(name, short_side)
    full = rgb if per_patch else np.concatenate([rgb, task_input(task, rgb)], axis=-1)
    count = num_patches // len(images) + (i < num_patches % len(images))
    for _ in range(count):
      r = rng.integers(0, full.shape[0] - patch_size + 1)
      c = rng.integers(0, full.shape[1] - patch_size + 1)
      patch = full[r:r + patch_size, c:c + patch_size]
      if rng.random() < 0.5:
        patch = patch[:, ::-1]
      xs.append(task_input(task, patch, rng) if per_patch else patch[..., 3:])
      ys.append(2.0 * patch[..., :3] - 1.0)
  return ImagePairs(np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32))


def heldout_pairs(task: str, images: Sequence[str] = TEST_IMAGES,
                  short_side: int = 128) -> ImagePairs:
  """The centre ``short_side`` x ``short_side`` square of each held-out image."""
  overlap = set(images) & set(TRAIN_IMAGES)
  if overlap:
    raise ValueError(f"test images {sorted(overlap)} are training images; hold out others")
  return centre_crops(task, images, short_side)


def centre_crops(task: str, images: Sequence[str], short_side: int = 128) -> ImagePairs:
  """The centre square of each image, whether held out or not (``heldout_pairs`` checks that;
  on the training images this measures fit, for comparison with the held-out score)."""
  xs, ys = [], []
  for name in images:
    rgb = load_rgb(name, short_side)
    r = (rgb.shape[0] - short_side) // 2
    c = (rgb.shape[1] - short_side) // 2
    rgb = rgb[r:r + short_side, c:c + short_side]
    xs.append(task_input(task, rgb, np.random.default_rng(zlib.crc32(name.encode()))))
    ys.append(2.0 * rgb - 1.0)
  return ImagePairs(np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32))


def pair_batches(data: ImagePairs, batch_size: int, *, seed: int,
                 epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(inputs, targets) batches of one shuffled epoch; the last partial batch is dropped."""
  if not 1 <= batch_size <= len(data):
    raise ValueError(f"batch_size must be in 1..{len(data)} (dataset size), got {batch_size}")
  order = epoch_order(len(data), seed=seed, epoch=epoch)
  for b in range(len(data) // batch_size):
    idx = order[b * batch_size:(b + 1) * batch_size]
    yield data.inputs[idx], data.targets[idx]
