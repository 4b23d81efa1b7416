import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from issp import IsspError
from issp.data import (
    PatchDataset,
    bicubic_resize,
    default_image_paths,
    find_images,
    load_image,
    make_lr,
    modcrop,
    split_train_val,
    to_array,
    to_rgb_array,
)


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_png(path, array: np.ndarray):
    Image.fromarray(array).save(path)
    return path


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR says width x height, with a valid CRC so only the size is wrong."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    # Signature (8) + chunk length (4), then b"IHDR" and its 13 data bytes, then the CRC.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_find_images_is_recursive_sorted_and_skips_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.JPG", "notes.txt", "._b.png"):
        (tmp_path / name).write_bytes(b"x")
    assert find_images(tmp_path) == [tmp_path / "b.png", tmp_path / "sub" / "a.JPG"]


def test_find_images_rejects_missing_or_empty_folder(tmp_path):
    with pytest.raises(IsspError, match="not found"):
        find_images(tmp_path / "missing")
    with pytest.raises(IsspError, match="no images"):
        find_images(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(IsspError, match="not a folder: .*a.png .give the folder that holds"):
        find_images(tmp_path / "a.png")


def test_find_images_leaves_out_hidden_folders_and_follows_linked_ones(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for name in ("data/a.png", "data/.thumbnails/a.png", "data/.Trash-1000/files/b.png",
                 "elsewhere/c.png"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(data, target_is_directory=True)  # met once, not forever
    assert find_images(data) == [data / "a.png", data / "linked" / "c.png"]


def test_load_image_rejects_text_file_named_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(IsspError, match="fake.png"):
        load_image(path)


def test_load_image_rejects_truncated_png(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(noise_image(64, 64)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:2000])
    with pytest.raises(IsspError, match="cut.png"):
        load_image(path)


def test_load_image_rejects_huge_header_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(30000, 30000))
    with pytest.raises(IsspError, match="bomb.png"):
        load_image(path)


def test_load_image_enforces_max_pixels(tmp_path):
    path = save_png(tmp_path / "big.png", noise_image(100, 100))
    with pytest.raises(IsspError, match="pixel limit"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_load_image_rejects_animated_gif(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(IsspError, match="animated"):
        load_image(path)


def test_load_image_accepts_one_pixel_image(tmp_path):
    path = save_png(tmp_path / "dot.png", noise_image(1, 1))
    assert load_image(path).size == (1, 1)


def test_load_image_applies_exif_orientation(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_to_rgb_array_scales_16_bit_to_8_bit():
    grey16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    rgb = to_rgb_array(Image.fromarray(grey16))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0, :, 0].tolist() == [0, 100, 255]


def test_to_rgb_array_handles_palette_with_transparency_without_warning():
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    img.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb_array(img)
    assert rgb.shape == (4, 4, 3) and rgb[0, 0].tolist() == [200, 10, 20]


@pytest.mark.parametrize(
    ("mode", "color", "expected"),
    [
        ("CMYK", (0, 255, 255, 0), [255, 0, 0]),
        ("LA", (90, 0), [90, 90, 90]),
        ("RGBA", (1, 2, 3, 0), [1, 2, 3]),
        ("F", 0.5, [128, 128, 128]),
        ("L", 7, [7, 7, 7]),
    ],
)
def test_to_rgb_array_converts_common_modes(mode, color, expected):
    rgb = to_rgb_array(Image.new(mode, (3, 2), color))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[1, 2].tolist() == expected


def test_to_array_keeps_greyscale_single_channel():
    assert to_array(Image.new("L", (3, 2), 9)).shape == (2, 3)
    assert to_array(Image.new("I;16", (3, 2), 65535)).max() == 255
    assert to_array(Image.new("RGB", (3, 2))).shape == (2, 3, 3)


def test_make_lr_modcrops_then_downscales():
    hr = noise_image(13, 10)
    assert modcrop(hr, 3).shape == (12, 9, 3)
    lr = make_lr(hr, 3)
    assert lr.shape == (4, 3, 3) and lr.dtype == np.uint8


def test_bicubic_resize_keeps_flat_colour():
    flat = np.full((8, 6, 3), 77, dtype=np.uint8)
    assert (bicubic_resize(flat, (3, 4)) == 77).all()
    assert (bicubic_resize(flat, (12, 16)) == 77).all()
    assert bicubic_resize(flat[:, :, 0], (3, 4)).shape == (4, 3)


@pytest.fixture
def photo_paths(tmp_path):
    # Smooth content so that bicubic of a patch matches the crop of the whole LR closely.
    yy, xx = np.mgrid[0:72, 0:80]
    smooth = np.stack([yy * 3, xx * 3, (xx + yy) * 2], axis=2) % 256
    paths = [save_png(tmp_path / "a.png", smooth.astype(np.uint8))]
    paths.append(save_png(tmp_path / "b.png", noise_image(60, 64, seed=1)))
    return paths


def test_patch_dataset_shapes_and_range(photo_paths):
    dataset = PatchDataset(photo_paths, scale=2, hr_patch=32, epoch_size=10)
    assert len(dataset) == 10
    lr, hr = dataset[3]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 32, 32)
    assert lr.dtype == hr.dtype == torch.float32
    assert float(hr.min()) >= 0.0 and float(hr.max()) <= 1.0


def test_patch_dataset_is_a_function_of_seed_and_index(photo_paths):
    first = PatchDataset(photo_paths, scale=2, hr_patch=32, epoch_size=8, seed=5)
    again = PatchDataset(photo_paths, scale=2, hr_patch=32, epoch_size=8, seed=5)
    other = PatchDataset(photo_paths, scale=2, hr_patch=32, epoch_size=8, seed=6)
    assert torch.equal(first[4][1], again[4][1])
    assert not torch.equal(first[4][1], other[4][1])
    # Workers and indices past the nominal epoch, as a training loop's sampler may ask.
    loader = torch.utils.data.DataLoader(first, batch_size=4, sampler=[4, 9, 100], num_workers=2)
    _, hr = next(iter(loader))
    assert torch.equal(hr[0], first[4][1]) and torch.equal(hr[2], again[100][1])


def test_patch_dataset_augmented_pairs_stay_aligned(photo_paths):
    dataset = PatchDataset(photo_paths[:1], scale=2, hr_patch=32, augment=True, epoch_size=16)
    for index in range(len(dataset)):
        lr, hr = (t.mul(255).round().byte().permute(1, 2, 0).numpy() for t in dataset[index])
        downscaled = make_lr(hr, 2)
        # Away from the patch edge, where the bicubic kernel sees the same pixels.
        diff = np.abs(downscaled.astype(int) - lr.astype(int))[3:-3, 3:-3]
        assert diff.max() <= 1, index


def test_patch_dataset_skips_small_and_unreadable_files_with_one_warning_each(
    photo_paths, tmp_path
):
    small = save_png(tmp_path / "small.png", noise_image(20, 20))
    broken = tmp_path / "broken.png"
    broken.write_text("nope")
    with pytest.warns(UserWarning) as record:
        dataset = PatchDataset([small, broken, *photo_paths], scale=2, hr_patch=32)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any("broken.png" in m for m in messages) and any("small.png" in m for m in messages)
    assert len(dataset) == 2


def test_patch_dataset_with_nothing_usable_says_why(tmp_path):
    small = save_png(tmp_path / "small.png", noise_image(20, 20))
    (tmp_path / "text.png").write_text("nope")
    message = "of 2, 1 could not be read and 1 are smaller than the 32x32 px patch"
    with pytest.warns(UserWarning), pytest.raises(IsspError, match=message):
        PatchDataset([small, tmp_path / "text.png"], scale=2, hr_patch=32)


def test_patch_dataset_rejects_patch_not_multiple_of_scale(photo_paths):
    with pytest.raises(IsspError, match="multiple"):
        PatchDataset(photo_paths, scale=3, hr_patch=32)


def test_default_image_paths_are_bundled_colour_photos():
    paths = default_image_paths()
    assert len(paths) >= 5
    for path in paths:
        with Image.open(path) as img:
            assert img.mode == "RGB" and min(img.size) >= 256, path.name


def test_split_train_val_is_deterministic_and_disjoint(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(10)]
    train, val = split_train_val(paths, val_fraction=0.2, seed=1)
    assert len(val) == 2 and sorted(train + val) == paths
    assert split_train_val(paths[::-1], val_fraction=0.2, seed=1) == (train, val)
    assert split_train_val(paths[:3], val_fraction=0.01)[1] != []
    with pytest.raises(IsspError):
        split_train_val(paths, val_fraction=1.0)
    with pytest.raises(IsspError, match="got 1; give a separate validation folder"):
        split_train_val(paths[:1], val_fraction=0.1)
