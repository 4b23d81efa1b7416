"""Benchmark evaluation with the standard SR protocol.

For each image: crop HR to a multiple of the scale, make LR with MATLAB-style bicubic,
upscale it (a model, or bicubic for the baseline), quantize to 8 bits, and score PSNR and
SSIM on the Y channel with ``crop_border = scale``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from issp import IsspError
from issp.data import find_images, load_image, make_lr, modcrop, to_array
from issp.metrics import psnr, ssim
from issp.upscale import upscale_array


def evaluate_images(
    model: nn.Module | None,
    paths: Sequence[str | Path],
    scale: int,
    tile: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on the given HR images.

    Returns ``{"psnr": mean, "ssim": mean, "images": [{"name", "psnr", "ssim"}, ...]}``.
    Greyscale images are scored on their grey values, as the published tables do.
    """
    if not paths:
        raise IsspError("no images to evaluate")
    rows = []
    for path in tqdm(paths, desc=f"x{scale}", disable=not progress):
        hr = modcrop(to_array(load_image(path)), scale)
        sr = upscale_array(model, make_lr(hr, scale), scale, tile=tile)
        rows.append(
            {
                "name": Path(path).name,
                "psnr": psnr(sr, hr, crop_border=scale),
                "ssim": ssim(sr, hr, crop_border=scale),
            }
        )
    return {
        "psnr": sum(r["psnr"] for r in rows) / len(rows),
        "ssim": sum(r["ssim"] for r in rows) / len(rows),
        "images": rows,
    }


def evaluate_folder(
    model: nn.Module | None,
    folder: str | Path,
    scale: int,
    tile: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on every image in ``folder``, e.g. Set5.

    See :func:`evaluate_images` for the result's layout.
    """
    return evaluate_images(model, find_images(folder), scale, tile=tile, progress=progress)


def format_table(result: dict[str, Any]) -> str:
    """Render an evaluation result as a plain-text table, one row per image plus the mean."""
    names = [r["name"] for r in result["images"]]
    width = max(len("mean"), len("image"), *(len(n) for n in names))
    lines = [f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}", "-" * (width + 17)]
    lines += [f"{r['name']:<{width}}  {r['psnr']:7.2f}  {r['ssim']:.4f}" for r in result["images"]]
    lines += ["-" * (width + 17), f"{'mean':<{width}}  {result['psnr']:7.2f}  {result['ssim']:.4f}"]
    return "\n".join(lines)
