"""Run a super-resolution model (or bicubic) on tensors, arrays and Pillow images.

A model is any ``nn.Module`` mapping ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, sH, sW)``.
``None`` stands for bicubic upscaling, so the baseline and the learned models share every
line of pre- and post-processing. The caller puts the model in eval mode.

:func:`inference_model` prepares a loaded checkpoint for the path it timed fastest on
this machine (``python -m benchmarks.upscale_latency`` compares them), and
:func:`fast_tile` gives the tile size that goes with it; the app and ``issp upscale``
both use them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch import nn

from issp import IsspError
from issp.data import bicubic_resize, to_array, to_tensor
from issp.files import write_text
from issp.machine import cache_folder, machine_description
from issp.models import EDSR
from issp.sparse import KERNEL_DIGEST, SparseConv2d, kernel_error, sparsify

log = logging.getLogger(__name__)

# Output pixels per tile side: tiles redo their 16 px margins, so small ones waste work,
# and large ones ran slower too (bigger tensors than the caches and the allocator's
# reuse). A 512 px photo, bfloat16 path, 1 thread, median of 7 (load average 5):
# x2 358/338/313 ms and x4 986/886/965 ms with 384/512/768 px tiles.
TILE_OUTPUT = 512
# zlib level for saved PNGs: level 1 wrote a 2048 px x4 result 4.5x faster than Pillow's
# default 6, for a file 16% larger.
PNG_COMPRESS_LEVEL = 1
# inference_model's paths for an EDSR, and where it keeps their timings per checkpoint.
PATH_FP32 = "dense float32, channels-last"
PATH_BF16 = "dense bfloat16, channels-last"
PATH_SPARSE = "sparse kernel, float32"
PATHS_FILE = "paths.json"  # in issp.machine.cache_folder()
TIMED_CALLS = 2  # per path, after one warm-up call; the faster call counts

# Told the fraction done (0 to 1) and what is running, e.g. "tile 3 of 16"; the app shows
# it as a progress bar.
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class OutputFormat:
    """A file format the full-size result can be downloaded in."""

    label: str  # as the Upscale tab offers it
    pillow: str  # Pillow's name for it
    suffix: str
    options: dict = field(default_factory=dict)  # Pillow's save options
    alpha: bool = True  # whether it keeps an alpha channel
    max_side: int | None = None  # the largest width or height the format can store

    def check_fits(self, width: int, height: int) -> None:
        """IsspError, before any work, if a ``width`` x ``height`` image cannot be saved."""
        if self.max_side is not None and max(width, height) > self.max_side:
            raise IsspError(
                f"{self.label} stores at most {self.max_side:,} px a side and this output "
                f"would be {width:,}x{height:,}; choose PNG or a smaller image"
            )

    def save(self, image: Image.Image, path: Path) -> None:
        """Write ``image`` to ``path``, without its alpha channel where this format has none."""
        if not self.alpha and "A" in image.getbands():
            image = image.convert("L" if image.mode == "LA" else "RGB")
        image.save(path, self.pillow, **self.options)


# By the name the API takes. WebP's ``exact`` keeps the colour under transparent pixels
# too, so every pixel round-trips; its lossless effort (method 1, quality 20) wrote a
# 2048 px x4 astronaut in 0.8 s against the default's 2.8 s, 0.2% larger (about 56% of
# the PNG). JPEG at quality 95, as Pillow's default 75 blurs the very detail the model adds.
WEBP_LOSSLESS = {"lossless": True, "exact": True, "method": 1, "quality": 20}
# The largest sides: WebP's bitstream has 14 bits per side; libjpeg refuses above 65,500.
WEBP_MAX_SIDE = 16_383
JPEG_MAX_SIDE = 65_500
OUTPUT_FORMATS = {
    "PNG": OutputFormat("PNG", "PNG", ".png", {"compress_level": PNG_COMPRESS_LEVEL}),
    "WebP": OutputFormat("WebP (lossless)", "WEBP", ".webp", WEBP_LOSSLESS, max_side=WEBP_MAX_SIDE),
    "JPEG": OutputFormat(
        "JPEG (quality 95)", "JPEG", ".jpg", {"quality": 95}, alpha=False, max_side=JPEG_MAX_SIDE
    ),
}
DEFAULT_FORMAT = "PNG"
# What ``issp upscale`` writes for each output suffix.
SUFFIX_FORMATS = {
    ".png": OUTPUT_FORMATS["PNG"],
    ".webp": OUTPUT_FORMATS["WebP"],
    ".jpg": OUTPUT_FORMATS["JPEG"],
    ".jpeg": OUTPUT_FORMATS["JPEG"],
    ".tif": OutputFormat("TIFF", "TIFF", ".tif"),
    ".tiff": OutputFormat("TIFF", "TIFF", ".tiff"),
    ".bmp": OutputFormat("BMP", "BMP", ".bmp"),
}


class InferenceModel(nn.Module):
    """A model prepared by :func:`inference_model`; ``path`` names the way it runs and
    ``tile_ms`` holds what each path it was chosen among took on one tile here."""

    def __init__(
        self,
        model: nn.Module,
        path: str,
        channels_last: bool,
        bf16: bool,
        tile_ms: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.path = path
        self.channels_last = channels_last
        self.bf16 = bf16
        self.tile_ms = tile_ms or {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x).float()

    def describe(self) -> str:
        """The path, and where it was chosen by timing, how much faster it was than the
        fastest dense path (e.g. ``sparse kernel, float32, 1.42x the fastest dense``)."""
        dense = [ms for path, ms in self.tile_ms.items() if path.startswith("dense")]
        if self.path.startswith("dense") or not dense or self.path not in self.tile_ms:
            return self.path
        return f"{self.path}, {min(dense) / self.tile_ms[self.path]:.2f}x the fastest dense"


def amx_available() -> bool:
    """Whether this CPU has AMX tiles, which make oneDNN's bfloat16 convolutions fast."""
    # A private torch function (2.3 and later); without it, no bfloat16 path.
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return torch.backends.mkldnn.is_available() and amx()


def bf16_available() -> bool:
    """Whether oneDNN has native bfloat16 convolutions here: AMX, or AVX-512 BF16 (an AMD
    EPYC of this project's, where dense bfloat16 ran 2.3x faster than float32)."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return amx_available() or (torch.backends.mkldnn.is_available() and avx512_bf16())


def inference_model(model: nn.Module, bf16: bool = True) -> InferenceModel:
    """A copy of the loaded checkpoint ``model`` prepared for the fastest CPU path here.

    An EDSR's candidate paths: channels-last float32; channels-last under bfloat16
    autocast, with ``bf16`` and native bfloat16 (``bf16_available``); and, if some 3x3
    conv has at least ``issp.sparse.MIN_SPARSITY`` zeros and a C compiler with OpenMP is
    there, the compiled sparse kernel (equal to float32 within float error; without the
    compiler ``kernel_error`` logs why once). Where there is more than one, each is timed
    on a tile of ``fast_tile`` and the fastest is used; the choice is kept per checkpoint
    and machine in ``cache_folder()/paths.json``, so it is measured once.

    bfloat16 moved the Set5 and Set14 PSNR of every edsr-tiny checkpoint by at most
    0.0096 dB, but about one 8-bit value in six by a grey level (two at most):
    ``bf16=False`` where the output must equal float32's. Anything else (SwinIR) runs as
    it is: bfloat16 moved its Set5 PSNR by 0.012 dB, and the kernel, which only replaces
    its few convs, was no faster (``python -m benchmarks.upscale_latency``).
    """
    if not isinstance(model, EDSR):
        return InferenceModel(_copy(model), "dense float32", channels_last=False, bf16=False)
    channels_last = _copy(model).to(memory_format=torch.channels_last)
    candidates = {PATH_FP32: InferenceModel(channels_last, PATH_FP32, True, False)}
    if bf16 and bf16_available():
        candidates[PATH_BF16] = InferenceModel(channels_last, PATH_BF16, True, True)
    sparse = sparsify(model)
    if any(isinstance(m, SparseConv2d) for m in sparse.modules()) and kernel_error() is None:
        candidates[PATH_SPARSE] = InferenceModel(sparse, PATH_SPARSE, False, False)
    if len(candidates) == 1:
        return candidates[PATH_FP32]
    tile_ms = _timed_paths(model, candidates)
    chosen = candidates[min(tile_ms, key=tile_ms.get)]
    chosen.tile_ms = tile_ms
    return chosen


def _timed_paths(model: nn.Module, candidates: dict[str, InferenceModel]) -> dict[str, float]:
    """Milliseconds per tile of each candidate path, from the cache or timed now."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    threads = f"{torch.get_num_threads()} threads"
    kernel = f"kernel {KERNEL_DIGEST}"
    key = "|".join(
        (digest.hexdigest()[:24], machine_description(), threads, kernel, *sorted(candidates))
    )
    file, tile = cache_folder() / PATHS_FILE, fast_tile(model.scale)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{file}.lock"):
            cached = _read_paths(file)
            if set(cached.get(key, {})) != set(candidates):
                cached[key] = measure_paths(candidates, tile)
                write_text(file, json.dumps(cached, indent=1))
            return cached[key]
    except (OSError, IsspError) as err:  # a read-only home, say: time the paths, keep nothing
        log.warning("inference paths timed but not kept in %s: %s", file, err)
        return measure_paths(candidates, tile)


def _read_paths(file: Path) -> dict[str, dict[str, float]]:
    """The cached timings; an unreadable or malformed file counts as empty (and is
    rewritten), since every entry can be measured again."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        key: value
        for key, value in data.items()
        if isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values())
    }


def measure_paths(candidates: dict[str, nn.Module], tile: int) -> dict[str, float]:
    """Milliseconds each model takes on one random ``tile`` x ``tile`` input: the fastest
    of ``TIMED_CALLS`` calls after a warm-up call, the paths taking turns."""
    x = torch.rand(1, 3, tile, tile)
    times: dict[str, float] = {}
    with torch.inference_mode():
        for model in candidates.values():
            model(x)
        for _ in range(TIMED_CALLS):
            for path, model in candidates.items():
                start = time.perf_counter()
                model(x)
                ms = 1e3 * (time.perf_counter() - start)
                times[path] = min(times.get(path, math.inf), ms)
    return times


def _copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().eval()


def fast_tile(scale: int) -> int:
    """LR tile side that was fastest for ``scale`` (``TILE_OUTPUT`` output pixels)."""
    return max(1, TILE_OUTPUT // scale)


def upscale_tensor(
    model: nn.Module,
    lr: torch.Tensor,
    scale: int,
    tile: int | None = None,
    overlap: int = 16,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Upscale ``lr`` (``(N, 3, H, W)`` in [0, 1]) by ``scale``; the result is clamped to [0, 1].

    With ``tile``, the LR image is cut into ``tile x tile`` blocks, each run with an
    ``overlap``-pixel margin of real neighbouring pixels, and only the block's own part of
    the output is kept. For a convolutional model whose receptive-field radius is at most
    ``overlap`` LR pixels this equals the untiled output up to float error, while the model
    only ever sees one tile. The model runs on its parameters' device; the result is
    returned on ``lr``'s device. ``progress`` is told before each tile.
    """
    if lr.ndim != 4 or lr.shape[1] != 3:
        raise IsspError(f"expected an (N, 3, H, W) tensor, got shape {tuple(lr.shape)}")
    if scale < 1:
        raise IsspError(f"scale must be a positive integer, got {scale}")
    if tile is not None and tile < 1:
        raise IsspError(f"tile must be a positive number of pixels, got {tile}")
    if overlap < 0:
        raise IsspError(f"overlap must be >= 0, got {overlap}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    n, _, height, width = lr.shape
    tile = tile or max(height, width)
    corners = [(y0, x0) for y0 in range(0, height, tile) for x0 in range(0, width, tile)]
    out = torch.empty(n, 3, height * scale, width * scale, dtype=lr.dtype, device=lr.device)
    with torch.inference_mode():
        for index, (y0, x0) in enumerate(corners):
            if progress is not None:
                progress(index / len(corners), f"tile {index + 1} of {len(corners)}")
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, height), min(x1 + overlap, width)
            patch = lr[:, :, py0:py1, px0:px1].to(device=device, dtype=dtype)
            sr = model(patch)
            expected = (n, 3, (py1 - py0) * scale, (px1 - px0) * scale)
            if tuple(sr.shape) != expected:
                raise IsspError(
                    f"model output has shape {tuple(sr.shape)}, expected {expected} "
                    f"for x{scale}: is the scale right for this model?"
                )
            core = sr[
                :,
                :,
                (y0 - py0) * scale : (y1 - py0) * scale,
                (x0 - px0) * scale : (x1 - px0) * scale,
            ]
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = core.to(out)
    return out.clamp_(0.0, 1.0)


def upscale_array(
    model: nn.Module | None,
    img: np.ndarray,
    scale: int,
    tile: int | None = None,
    overlap: int = 16,
    progress: Progress | None = None,
) -> np.ndarray:
    """Upscale a uint8 ``HxWx3`` RGB or ``HxW`` grey array with ``model`` (bicubic if ``None``).

    The model always sees RGB; for greyscale input its output is converted back to grey
    with Pillow's ITU-R 601 luma, so the result has the input's layout. ``progress`` is
    told before each of the model's tiles.
    """
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise IsspError(f"expected an HxW or HxWx3 uint8 array, got {img.dtype} {img.shape}")
    if scale < 1:
        raise IsspError(f"scale must be a positive integer, got {scale}")
    height, width = img.shape[:2]
    if model is None:
        return bicubic_resize(img, (width * scale, height * scale))
    rgb = np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img
    lr = to_tensor(rgb)
    sr = upscale_tensor(model, lr[None], scale, tile, overlap, progress)[0]
    sr_rgb = sr.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if img.ndim == 2:
        return np.asarray(Image.fromarray(sr_rgb).convert("L"))
    return sr_rgb


def upscale_image(
    model: nn.Module | None,
    img: Image.Image,
    scale: int,
    tile: int | None = None,
    overlap: int = 16,
    progress: Progress | None = None,
) -> Image.Image:
    """Upscale a Pillow image of any mode with ``model`` (bicubic if ``None``).

    The model sees RGB. Greyscale input comes back as ``L``; an alpha channel (RGBA, LA,
    or a palette/colour-key transparency) is upscaled with bicubic and re-attached, giving
    ``RGBA`` (``LA`` for greyscale). Everything else comes back as ``RGB``. ``progress``
    is told before each of the model's tiles.
    """
    sr = Image.fromarray(upscale_array(model, to_array(img), scale, tile, overlap, progress))
    if "A" in img.getbands() or "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
        sr.putalpha(alpha.resize(sr.size, Image.BICUBIC))
    return sr


def bicubic_upscale(img: Image.Image, scale: int) -> Image.Image:
    """The bicubic baseline: :func:`upscale_image` with no model."""
    return upscale_image(None, img, scale)
