"""Images in, arrays and training patches out.

Everything that reads an image file lives here, so the rules for what the library accepts
(formats, size limit, EXIF orientation, colour modes) are in one place. The degradation
model is the field's standard one: crop HR to a multiple of the scale, then MATLAB-style
bicubic downscaling (cubic coefficient a = -0.5, antialiased), which Pillow's BICUBIC
resize implements.
"""

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from issp import IsspError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 40_000_000

# Natural colour photos shipped inside scikit-image, so training works
# with nothing to download. Synthetic, greyscale, tiny or alpha-matted files are left out.
_SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)

# What Pillow raises for files that are not images, are cut short or are malformed.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)


def find_images(folder: str | Path) -> list[Path]:
    """Return every image file under ``folder``, subfolders and linked folders included,
    sorted by path.

    Hidden files and folders are ignored: macOS leaves ``._name.png`` resource forks beside
    copied images, and NAS boxes and desktops keep thumbnails and trash in dot-folders.
    """
    folder = Path(folder)
    if folder.is_file():
        raise IsspError(f"not a folder: {folder} (give the folder that holds the images)")
    if not folder.is_dir():
        raise IsspError(f"image folder not found: {folder}")
    paths = []
    seen = set()
    # os.walk can follow linked folders (Path.rglob does not by default); ``seen`` stops a
    # link that points back up the tree, and walking in sorted order makes the copy kept
    # of a folder reached twice the same on every disk.
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths += [
            Path(root, name)
            for name in files
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS
            and not name.startswith(".")
            and Path(root, name).is_file()
        ]
    if not paths:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise IsspError(f"no images ({extensions}) found in {folder}")
    return sorted(paths)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode one still image, upright according to its EXIF orientation.

    The pixel count is checked from the header before any pixel data is decoded, so an
    oversized or hostile file costs nothing. Pillow's own decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) still applies when ``max_pixels`` is above it.

    Raises:
        IsspError: the file is missing, not an image, truncated, animated or multi-page,
            or has more than ``max_pixels`` pixels.
    """
    path = Path(path)
    try:
        found = path.is_file()
    except OSError:  # a name longer than the file system allows, say
        found = False
    if not found:
        raise IsspError(f"image file not found: {path}")
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as err:
        raise IsspError(f"{path}: too large to decode safely ({err})") from err
    except _DECODE_ERRORS as err:
        raise IsspError(f"{path}: not a readable image ({err})") from err
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise IsspError(f"{path}: {width}x{height} is over the {max_pixels:,} pixel limit")
        if getattr(img, "n_frames", 1) > 1:
            raise IsspError(f"{path}: animated or multi-page images are not supported")
        try:
            img.load()
            return ImageOps.exif_transpose(img)
        except _DECODE_ERRORS as err:
            raise IsspError(f"{path}: not a readable image ({err})") from err


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a Pillow image of any common mode to an ``HxWx3`` uint8 RGB array.

    Alpha is dropped (``issp.upscale`` re-attaches it). 16-bit greyscale is rescaled to
    8 bits rather than clipped; float images are read as [0, 1] when all values lie in it
    and as [0, 255] otherwise.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow opens 16-bit greyscale files as I;16 (older versions as I), so both are
        # read as 16-bit; 65535 / 257 == 255 exactly, so full-scale white stays white.
        wide = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P":
        # Pillow warns when a palette image with transparency skips the RGBA step.
        img = img.convert("RGBA")
    try:
        rgb = img.convert("RGB")
    except ValueError as err:
        raise IsspError(f"unsupported image mode {img.mode}") from err
    return np.array(rgb, dtype=np.uint8)


def is_greyscale(img: Image.Image) -> bool:
    """True for single-channel modes (1, L, LA, I;16, I, F), with or without alpha."""
    return img.getbands()[0] in ("1", "L", "I", "F")


def to_array(img: Image.Image) -> np.ndarray:
    """Convert a Pillow image to uint8: ``HxW`` for greyscale modes, ``HxWx3`` RGB otherwise.

    Evaluation keeps greyscale images single-channel because the published benchmark
    numbers score them on their grey values, not on the [16, 235] luma of replicated RGB.
    """
    rgb = to_rgb_array(img)
    return rgb[:, :, 0].copy() if is_greyscale(img) else rgb


def bicubic_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 ``HxW`` or ``HxWxC`` array to ``size = (width, height)``.

    Pillow's BICUBIC matches MATLAB's ``imresize`` (a = -0.5, antialiased when shrinking)
    to within about 0.1 dB on the standard benchmarks. Channels are resized one at a time
    as 8-bit greyscale because Pillow premultiplies alpha when resizing RGBA images.
    """
    if img.dtype != np.uint8:
        raise IsspError(f"bicubic_resize expects a uint8 array, got {img.dtype}")
    width, height = size
    if width < 1 or height < 1:
        raise IsspError(f"cannot resize to {width}x{height}")
    if img.ndim == 2:
        return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, c])).resize(size, Image.BICUBIC))
        for c in range(img.shape[2])
    ]
    return np.stack(channels, axis=2)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges so height and width are multiples of ``scale``."""
    if scale < 1:
        raise IsspError(f"scale must be a positive integer, got {scale}")
    height, width = img.shape[:2]
    return img[: height - height % scale, : width - width % scale]


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """Return the low-resolution input for ``hr``: modcrop, then bicubic downscale by 1/scale."""
    hr = modcrop(hr, scale)
    height, width = hr.shape[:2]
    if height < scale or width < scale:
        raise IsspError(f"a {width}x{height} image is too small for x{scale}")
    return bicubic_resize(hr, (width // scale, height // scale))


class PatchDataset(torch.utils.data.Dataset):
    """Aligned random (lr, hr) patch pairs from a few images held in memory.

    Each image is decoded once, its LR made once with :func:`make_lr`, and every item is a
    random crop of an LR patch at ``(y, x)`` with the HR patch at ``(scale*y, scale*x)``,
    optionally flipped and rotated by 90 degrees. Items are float CHW tensors in [0, 1].

    Item ``i`` is a pure function of ``(seed, i)``: the same seed gives the same patches
    whatever the worker count or sampler order. Each index is one fixed patch, so for fresh
    crops every step either ask for indices ``0, 1, 2, ...`` across the whole run (any
    non-negative index is valid; ``len`` is only a nominal epoch of ``epoch_size`` items
    for shuffling samplers) or change ``seed`` between epochs.

    Unreadable images and images smaller than the patch are skipped with one warning each.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        scale: int,
        hr_patch: int = 96,
        augment: bool = True,
        epoch_size: int | None = None,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if scale < 1:
            raise IsspError(f"scale must be a positive integer, got {scale}")
        if hr_patch < scale or hr_patch % scale:
            raise IsspError(f"hr_patch ({hr_patch}) must be a positive multiple of scale {scale}")
        self.scale = scale
        self.hr_patch = hr_patch
        self.augment = augment
        self.seed = seed
        self.hr_images: list[np.ndarray] = []
        self.lr_images: list[np.ndarray] = []
        unreadable = small = 0
        for path in paths:
            try:
                hr = modcrop(to_rgb_array(load_image(path, max_pixels)), scale)
            except IsspError as err:
                warnings.warn(f"skipping an image: {err}", stacklevel=2)
                unreadable += 1
                continue
            height, width = hr.shape[:2]
            if height < hr_patch or width < hr_patch:
                warnings.warn(
                    f"skipping {path}: {width}x{height} is smaller than the {hr_patch}px patch",
                    stacklevel=2,
                )
                small += 1
                continue
            self.hr_images.append(hr)
            self.lr_images.append(make_lr(hr, scale))
        if not self.hr_images:
            raise IsspError(
                f"no usable training images: of {len(paths)}, {unreadable} could not be read "
                f"and {small} are smaller than the {hr_patch}x{hr_patch} px patch"
            )
        self.epoch_size = len(self.hr_images) if epoch_size is None else epoch_size
        if self.epoch_size < 1:
            raise IsspError(f"epoch_size must be positive, got {epoch_size}")

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            raise IndexError(index)
        # Seeding from (seed, index) rather than a shared stream keeps items independent of
        # worker count and of the order in which the sampler asks for them.
        rng = np.random.default_rng((self.seed, index))
        k = index % len(self.hr_images)
        lr_img, hr_img = self.lr_images[k], self.hr_images[k]
        lr_patch = self.hr_patch // self.scale
        y = int(rng.integers(0, lr_img.shape[0] - lr_patch + 1))
        x = int(rng.integers(0, lr_img.shape[1] - lr_patch + 1))
        lr = lr_img[y : y + lr_patch, x : x + lr_patch]
        hr_y, hr_x = y * self.scale, x * self.scale
        hr = hr_img[hr_y : hr_y + self.hr_patch, hr_x : hr_x + self.hr_patch]
        if self.augment:
            flip_h, flip_v, transpose = rng.random(3) < 0.5
            lr, hr = (_dihedral(a, flip_h, flip_v, transpose) for a in (lr, hr))
        return to_tensor(lr), to_tensor(hr)


def _dihedral(img: np.ndarray, flip_h: bool, flip_v: bool, transpose: bool) -> np.ndarray:
    """Apply one of the 8 flips/90-degree rotations to an HxWxC array."""
    if flip_h:
        img = img[:, ::-1]
    if flip_v:
        img = img[::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return img


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def default_image_paths() -> list[Path]:
    """Colour photos bundled with scikit-image, for training out of the box.

    Only files present in the installed packages are returned (scikit-image fetches some
    data lazily), so this never touches the network.
    """
    import skimage

    skimage_dir = Path(skimage.__file__).parent / "data"
    paths = [skimage_dir / name for name in _SKIMAGE_PHOTOS if (skimage_dir / name).is_file()]
    if not paths:
        raise IsspError("no sample photos found in the installed scikit-image")
    return paths


def split_train_val(
    paths: Sequence[str | Path], val_fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split image paths into (train, val), the same way for the same paths and seed.

    The split ignores input order, and at least one image is kept on each side when
    ``val_fraction`` is positive.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise IsspError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(Path(p) for p in paths)
    n_val = round(len(ordered) * val_fraction)
    if val_fraction > 0:
        if len(ordered) < 2:
            raise IsspError(
                f"need at least 2 images to split off a validation set, got {len(ordered)}; "
                "give a separate validation folder (the CLI's --val)"
            )
        n_val = min(max(n_val, 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val
