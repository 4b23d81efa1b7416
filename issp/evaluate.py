"""Benchmark evaluation with the standard SR protocol.

For each image: crop HR to a multiple of the scale, make LR with MATLAB-style bicubic,
upscale it (a model, or bicubic for the baseline), quantize to 8 bits, and score PSNR and
SSIM on the Y channel with ``crop_border = scale``. Greyscale images stay single-channel
and are scored on their grey values, as the published tables do.
"""

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from issp import IsspError
from issp.data import find_images, load_image, make_lr, modcrop, to_array
from issp.metrics import psnr, ssim
from issp.upscale import upscale_array

# (name, lr, hr): uint8 arrays, HxWx3 or HxW, with hr exactly scale x lr.
Pair = tuple[str, np.ndarray, np.ndarray]


def load_pair(path: str | Path, scale: int) -> Pair:
    """Read one HR image and make its LR input: ``(name, lr, hr)``."""
    hr = modcrop(to_array(load_image(path)), scale)
    return Path(path).name, make_lr(hr, scale), hr


def evaluate_arrays(
    model: nn.Module | None, pairs: Iterable[Pair], scale: int, tile: int | None = None
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on ``(name, lr, hr)`` pairs.

    Returns ``{"psnr": mean, "ssim": mean, "images": [{"name", "psnr", "ssim"}, ...]}``.
    """
    rows = []
    for name, lr, hr in pairs:
        sr = upscale_array(model, lr, scale, tile=tile)
        if sr.shape != hr.shape:
            raise IsspError(f"{name}: upscaled shape {sr.shape} does not match HR {hr.shape}")
        rows.append(
            {
                "name": name,
                "psnr": psnr(sr, hr, crop_border=scale),
                "ssim": ssim(sr, hr, crop_border=scale),
            }
        )
    if not rows:
        raise IsspError("no images to evaluate")
    return {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "images": rows,
    }


def evaluate_images(
    model: nn.Module | None,
    paths: Sequence[str | Path],
    scale: int,
    tile: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on HR image files; see :func:`evaluate_arrays`."""
    bar = tqdm(paths, desc=f"evaluate x{scale}", disable=not progress)
    return evaluate_arrays(model, (load_pair(p, scale) for p in bar), scale, tile=tile)


def evaluate_folder(
    model: nn.Module | None,
    folder: str | Path,
    scale: int,
    tile: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on every image in ``folder``, e.g. Set5."""
    return evaluate_images(model, find_images(folder), scale, tile=tile, progress=progress)


def validation_crops(paths: Sequence[str | Path], scale: int, size: int = 256) -> list[Pair]:
    """Decode validation images once, as centre crops of at most ``size`` HR pixels a side.

    Cropping keeps validation during training cheap on large photos. Unreadable images are
    skipped with a warning, as in training.
    """
    pairs = []
    side = size - size % scale
    for path in paths:
        try:
            hr = to_array(load_image(path))
        except IsspError as err:
            warnings.warn(f"skipping a validation image: {err}", stacklevel=2)
            continue
        height, width = hr.shape[:2]
        top, left = max((height - side) // 2, 0), max((width - side) // 2, 0)
        hr = modcrop(hr[top : top + side, left : left + side], scale)
        # Both metrics crop `scale` px per border and SSIM needs an 11x11 window inside.
        if min(hr.shape[:2]) < 2 * scale + 11:
            warnings.warn(f"skipping a validation image: {path} is too small", stacklevel=2)
            continue
        pairs.append((Path(path).name, make_lr(hr, scale), hr))
    if not pairs:
        raise IsspError("no usable validation images")
    return pairs


def format_table(result: dict[str, Any]) -> str:
    """Render an evaluation result as a plain-text table, one row per image plus the mean."""
    rows = result["images"]
    width = max(len("image"), *(len(r["name"]) for r in rows))
    rule = "-" * (width + 17)
    lines = [f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}", rule]
    lines += [f"{r['name']:<{width}}  {r['psnr']:7.2f}  {r['ssim']:.4f}" for r in rows]
    lines += [rule, f"{'mean':<{width}}  {result['psnr']:7.2f}  {result['ssim']:.4f}"]
    return "\n".join(lines)
