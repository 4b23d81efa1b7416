"""Benchmark evaluation with the standard SR protocol.

For each image: crop HR to a multiple of the scale, make LR with MATLAB-style bicubic,
upscale it (a model, or bicubic for the baseline), quantize to 8 bits, and score PSNR and
SSIM on the Y channel with ``crop_border = scale``. Greyscale images stay single-channel
and are scored on their grey values, as the published tables do.
"""

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class NoImages(IsspError):
    """Nothing was left to score."""


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
        raise NoImages("no images to evaluate")
    return {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "images": rows,
    }


def scoreable_pairs(
    folder: Path, paths: Iterable[Path], scale: int, skip: Callable[[str, str], None]
) -> Iterator[Pair]:
    """``(name, lr, hr)`` of each of ``paths`` (images under ``folder``) that can be scored
    at ``scale``, named by its path relative to ``folder``; ``skip(name, reason)`` is told of
    each one that cannot: unreadable, or too small for the metrics."""
    for path in paths:
        name = path.relative_to(folder).as_posix()
        try:
            _, lr, hr = load_pair(path, scale)
        except IsspError as error:
            skip(name, str(error).removeprefix(f"{path}: "))
            continue
        if not scoreable(hr, scale):
            skip(name, f"{hr.shape[1]}x{hr.shape[0]} is too small to score at x{scale}")
            continue
        yield name, lr, hr


def scoreable(hr: np.ndarray, scale: int) -> bool:
    """Whether PSNR and SSIM can score ``hr`` at ``scale``: both crop ``scale`` px per
    border, and SSIM needs an 11x11 window inside."""
    return min(hr.shape[:2]) >= 2 * scale + 11


def evaluate_folder(
    model: nn.Module | None,
    folder: str | Path,
    scale: int,
    tile: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (bicubic if ``None``) on every image under ``folder``, e.g. Set5.

    Rows are named by their path under ``folder``. Images that cannot be scored are left
    out with a warning each and listed under ``skipped``; where the images lie in more
    than one folder (a parent of Set5/ and Set14/, say), ``folders`` holds each folder's
    own means and ``count``, as pooling benchmarks into one mean is rarely what is wanted.
    """
    folder = Path(folder)
    skipped: list[dict[str, str]] = []

    def skip(name: str, reason: str) -> None:
        warnings.warn(f"skipping {name}: {reason}", stacklevel=2)
        skipped.append({"name": name, "why": reason})

    with tqdm(find_images(folder), desc=f"evaluate x{scale}", disable=not progress) as bar:
        try:
            result = evaluate_arrays(model, scoreable_pairs(folder, bar, scale, skip), scale, tile)
        except NoImages:
            first = f"{skipped[0]['name']}: {skipped[0]['why']}" if skipped else "none found"
            raise IsspError(f"no image in {folder} can be scored at x{scale} ({first})") from None
    if skipped:
        result["skipped"] = skipped
    folders = folder_means(result["images"])
    if len(folders) > 1:
        result["folders"] = folders
    return result


def folder_means(rows: list[dict]) -> dict[str, dict]:
    """Mean PSNR and SSIM and the ``count`` of the rows in each folder (``.``: the top)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(Path(row["name"]).parent.as_posix(), []).append(row)
    return {
        group: {
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "count": len(rows),
        }
        for group, rows in sorted(groups.items())
    }


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
        if not scoreable(hr, scale):
            warnings.warn(f"skipping a validation image: {path} is too small", stacklevel=2)
            continue
        pairs.append((Path(path).name, make_lr(hr, scale), hr))
    if not pairs:
        raise IsspError(
            f"no usable validation images: none of the {len(paths)} can be scored (see the "
            "warnings above)"
        )
    return pairs


def format_table(result: dict[str, Any]) -> str:
    """Render an evaluation result as a plain-text table: one row per image, then each
    folder's mean where the images lie in several, then the mean of all."""
    means = [
        (f"mean of {'the top level' if group == '.' else group + '/'} ({mean['count']})", mean)
        for group, mean in result.get("folders", {}).items()
    ]
    means.append(("mean", result))
    rows = [(r["name"], r) for r in result["images"]]
    width = max(len("image"), *(len(label) for label, _ in rows + means))
    rule = "-" * (width + 17)

    def line(label: str, scores: dict) -> str:
        return f"{label:<{width}}  {scores['psnr']:7.2f}  {scores['ssim']:.4f}"

    head = [f"{'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}", rule]
    return "\n".join(head + [line(*row) for row in rows] + [rule] + [line(*m) for m in means])
