import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from issp import IsspError
from issp.metrics import psnr, rgb_to_y, ssim


def image_pair(shape: tuple[int, ...], noise: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish image and a noisy copy, both uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, shape).astype(float)
    # Average neighbours so that SSIM's local statistics are not all noise.
    base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1) + np.roll(base, 1, (0, 1))) / 4
    hr = base.round().astype(np.uint8)
    sr = np.clip(base + rng.normal(0, noise, shape), 0, 255).round().astype(np.uint8)
    return sr, hr


def skimage_reference(sr, hr, crop):
    inner = (slice(crop, -crop or None), slice(crop, -crop or None))
    sr_y, hr_y = rgb_to_y(sr[inner]), rgb_to_y(hr[inner])
    return (
        peak_signal_noise_ratio(hr_y, sr_y, data_range=255),
        structural_similarity(
            sr_y,
            hr_y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
        ),
    )


def test_rgb_to_y_uses_bt601_studio_range():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    assert rgb_to_y(rgb)[0].tolist() == pytest.approx([16.0, 235.0, 16.0 + 65.481])


def test_rgb_to_y_returns_greyscale_unchanged():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    y = rgb_to_y(grey)
    assert y.dtype == np.float64 and (y == grey).all()
    assert (rgb_to_y(grey[:, :, None]) == grey).all()


@pytest.mark.parametrize(
    ("shape", "noise", "crop"),
    [((40, 50, 3), 5, 2), ((64, 48, 3), 20, 4), ((33, 35), 10, 0), ((30, 30, 1), 3, 3)],
)
def test_psnr_and_ssim_match_skimage(shape, noise, crop):
    sr, hr = image_pair(shape, noise)
    expected_psnr, expected_ssim = skimage_reference(sr, hr, crop)
    assert psnr(sr, hr, crop) == pytest.approx(expected_psnr, rel=1e-4)
    assert ssim(sr, hr, crop) == pytest.approx(expected_ssim, rel=1e-4)


def test_identical_images_score_perfectly():
    _, hr = image_pair((20, 20, 3), 1)
    assert math.isinf(psnr(hr, hr, 2))
    assert ssim(hr, hr, 2) == pytest.approx(1.0)


def test_crop_border_ignores_edge_errors():
    _, hr = image_pair((30, 30, 3), 1)
    sr = hr.copy()
    sr[:2] = 255 - sr[:2]
    assert math.isinf(psnr(sr, hr, 2)) and not math.isinf(psnr(sr, hr, 1))


def test_bad_inputs_are_user_errors():
    sr, hr = image_pair((20, 20, 3), 1)
    with pytest.raises(IsspError, match="shapes differ"):
        psnr(sr[:10], hr, 0)
    with pytest.raises(IsspError, match="uint8"):
        ssim(sr.astype(float), hr, 0)
    with pytest.raises(IsspError, match="SSIM needs"):
        ssim(sr, hr, 5)
