"""Run a super-resolution model (or bicubic) on tensors, arrays and Pillow images.

A model is any ``nn.Module`` mapping ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, sH, sW)``.
``None`` stands for bicubic upscaling, so the baseline and the learned models share every
line of pre- and post-processing. The caller puts the model in eval mode.
"""

import numpy as np
import torch
from PIL import Image
from torch import nn

from issp import IsspError
from issp.data import bicubic_resize, to_array, to_tensor


def upscale_tensor(
    model: nn.Module, lr: torch.Tensor, scale: int, tile: int | None = None, overlap: int = 16
) -> torch.Tensor:
    """Upscale ``lr`` (``(N, 3, H, W)`` in [0, 1]) by ``scale``; the result is clamped to [0, 1].

    With ``tile``, the LR image is cut into ``tile x tile`` blocks, each run with an
    ``overlap``-pixel margin of real neighbouring pixels, and only the block's own part of
    the output is kept. For a convolutional model whose receptive-field radius is at most
    ``overlap`` LR pixels this equals the untiled output up to float error, while the model
    only ever sees one tile. The model runs on its parameters' device; the result is
    returned on ``lr``'s device.
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
    out = torch.empty(n, 3, height * scale, width * scale, dtype=lr.dtype, device=lr.device)
    with torch.inference_mode():
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
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
) -> np.ndarray:
    """Upscale a uint8 ``HxWx3`` RGB or ``HxW`` grey array with ``model`` (bicubic if ``None``).

    The model always sees RGB; for greyscale input its output is converted back to grey
    with Pillow's ITU-R 601 luma, so the result has the input's layout.
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
    sr = upscale_tensor(model, lr[None], scale, tile=tile, overlap=overlap)[0]
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
) -> Image.Image:
    """Upscale a Pillow image of any mode with ``model`` (bicubic if ``None``).

    The model sees RGB. Greyscale input comes back as ``L``; an alpha channel (RGBA, LA,
    or a palette/colour-key transparency) is upscaled with bicubic and re-attached, giving
    ``RGBA`` (``LA`` for greyscale). Everything else comes back as ``RGB``.
    """
    sr = Image.fromarray(upscale_array(model, to_array(img), scale, tile, overlap))
    if "A" in img.getbands() or "transparency" in img.info:
        alpha = img.convert("RGBA").getchannel("A")
        sr.putalpha(alpha.resize(sr.size, Image.BICUBIC))
    return sr


def bicubic_upscale(img: Image.Image, scale: int) -> Image.Image:
    """The bicubic baseline: :func:`upscale_image` with no model."""
    return upscale_image(None, img, scale)
