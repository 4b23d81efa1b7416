"""PSNR and SSIM with the field's conventions (BasicSR / MATLAB).

Both compare 8-bit images on the Y channel of ITU-R BT.601 YCbCr after removing
``crop_border`` pixels at each edge; papers use ``crop_border = scale``. SSIM uses an
11x11 Gaussian window (sigma 1.5) with valid filtering, so border pixels never see padding.
"""

import numpy as np

from issp import IsspError

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966])
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_RADIUS = 5
_SSIM_SIGMA = 1.5


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Return the BT.601 luma (in [16, 235]) of an 8-bit RGB image as float64.

    Greyscale input (``HxW`` or ``HxWx1``) is returned as is, as float64.
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return img.astype(np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise IsspError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return 16.0 + (img.astype(np.float64) / 255.0) @ _Y_WEIGHTS


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images, on Y; ``inf`` if equal."""
    sr_y, hr_y = _cropped_y(sr, hr, crop_border)
    mse = np.mean((sr_y - hr_y) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """Structural similarity between two uint8 images, on Y (1.0 if equal)."""
    sr_y, hr_y = _cropped_y(sr, hr, crop_border)
    window = 2 * _SSIM_RADIUS + 1
    if min(sr_y.shape) < window:
        raise IsspError(f"SSIM needs at least {window}x{window} px after cropping the border")
    mu_x, mu_y = _gaussian_valid(sr_y), _gaussian_valid(hr_y)
    var_x = _gaussian_valid(sr_y * sr_y) - mu_x**2
    var_y = _gaussian_valid(hr_y * hr_y) - mu_y**2
    cov = _gaussian_valid(sr_y * hr_y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    return float(ssim_map.mean())


def _cropped_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of 8-bit images and return their border-cropped Y channels."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise IsspError(f"image shapes differ: {sr.shape} vs {hr.shape}")
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise IsspError(f"metrics expect uint8 images, got {sr.dtype} and {hr.dtype}")
    if crop_border < 0:
        raise IsspError(f"crop_border must be >= 0, got {crop_border}")
    height, width = sr.shape[:2]
    if height <= 2 * crop_border or width <= 2 * crop_border:
        raise IsspError(f"a {width}x{height} image leaves nothing after cropping {crop_border} px")
    inner = (slice(crop_border, height - crop_border), slice(crop_border, width - crop_border))
    return rgb_to_y(sr[inner]), rgb_to_y(hr[inner])


def _gaussian_valid(img: np.ndarray) -> np.ndarray:
    """Separable 11x11 Gaussian filter keeping only positions where the window fits."""
    offsets = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1)
    kernel = np.exp(-(offsets**2) / (2 * _SSIM_SIGMA**2))
    kernel /= kernel.sum()
    window = kernel.size
    rows = np.lib.stride_tricks.sliding_window_view(img, window, axis=0) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, window, axis=1) @ kernel
