import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from compressjax.data.image_pairs import (NOISE_SD, TEST_IMAGES, TRAIN_IMAGES, centre_crops, heldout_pairs,
                                          load_rgb, pair_batches, task_input, train_patches)
from compressjax.distill.image_metrics import psnr, ssim


def test_psnr_and_ssim_match_skimage():
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (2, 24, 19, 3)).astype(np.float32)
  b = np.clip(a + 0.2 * rng.normal(size=a.shape), -1, 1).astype(np.float32)
  for i in range(2):
    np.testing.assert_allclose(psnr(a, b)[i], peak_signal_noise_ratio(a[i], b[i], data_range=2.0),
                               rtol=1e-5)
    ref = structural_similarity(a[i], b[i], data_range=2.0, gaussian_weights=True,
                                use_sample_covariance=False, channel_axis=-1)
    np.testing.assert_allclose(ssim(a, b)[i], ref, rtol=1e-4)
  np.testing.assert_allclose(ssim(a, a), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    psnr(a, b[:, :5])
  with pytest.raises(ValueError, match="at least 11x11"):
    ssim(a[:, :8, :8], b[:, :8, :8])


def test_patches_and_held_out_images():
  assert not set(TRAIN_IMAGES) & set(TEST_IMAGES)
  d = train_patches("edges2rgb", 14, patch_size=16, seed=0, images=("astronaut", "rocket"),
                    short_side=64)
  assert d.inputs.shape == (14, 16, 16, 1) and d.targets.shape == (14, 16, 16, 3)
  assert set(np.unique(d.inputs)) <= {-1.0, 1.0}  # edge maps
  assert d.targets.min() >= -1.0 and d.targets.max() <= 1.0
  again = train_patches("edges2rgb", 14, patch_size=16, seed=0, images=("astronaut", "rocket"),
                        short_side=64)
  np.testing.assert_array_equal(d.targets, again.targets)
  t = heldout_pairs("gray2rgb", short_side=64)
  assert t.inputs.shape == (len(TEST_IMAGES), 64, 64, 1)
  # the grey input is the luminance of the target
  rgb = (t.targets[0] + 1) / 2
  np.testing.assert_allclose(t.inputs[0], task_input("gray2rgb", rgb), atol=1e-5)
  assert load_rgb("coffee", 32).shape == (32, 48, 3)
  seen = centre_crops("gray2rgb", ("astronaut",), short_side=64)  # training images allowed here
  np.testing.assert_array_equal(seen.targets[0], 2 * load_rgb("astronaut", 64) - 1)  # square
  batches = list(pair_batches(d, 4, seed=0, epoch=0))
  assert len(batches) == 3 and batches[0][0].shape == (4, 16, 16, 1)


def test_denoise_pairs_carry_fresh_seeded_noise():
  d = train_patches("denoise", 6, patch_size=16, seed=0, images=("astronaut",), short_side=64)
  assert d.inputs.shape == d.targets.shape == (6, 16, 16, 3)
  noise = (d.inputs - d.targets) / 2  # in [0, 1] units; clipping only shrinks it
  inside = np.abs(d.targets) < 0.5  # pixels far from the clip
  np.testing.assert_allclose(noise[inside].std(), NOISE_SD, rtol=0.1)
  assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.1  # per patch
  again = train_patches("denoise", 6, patch_size=16, seed=0, images=("astronaut",), short_side=64)
  np.testing.assert_array_equal(d.inputs, again.inputs)
  t, t2 = heldout_pairs("denoise", short_side=32), heldout_pairs("denoise", short_side=32)
  np.testing.assert_array_equal(t.inputs, t2.inputs)  # the same noisy test images every time
  assert t.inputs.min() >= -1 and t.inputs.max() <= 1 and not np.allclose(t.inputs, t.targets)
  with pytest.raises(ValueError, match="needs an rng"):
    task_input("denoise", load_rgb("coffee", 32))


def test_bad_data_requests_are_refused():
  with pytest.raises(ValueError, match="unknown task"):
    task_input("depth2rgb", np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="unknown image"):
    load_rgb("lena")
  with pytest.raises(ValueError, match="training images"):
    heldout_pairs("gray2rgb", images=("astronaut",))
  with pytest.raises(ValueError, match="patch_size"):
    train_patches("gray2rgb", 2, patch_size=80, short_side=64)
