import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from issp import IsspError, upscale
from issp.catalogue import load_zoo_model
from issp.data import default_image_paths, load_image, to_array, to_tensor
from issp.sparse import _kernel, kernel_error
from issp.upscale import (
    PATH_BF16,
    PATH_FP32,
    PATH_SPARSE,
    PATHS_FILE,
    bf16_available,
    bicubic_upscale,
    fast_tile,
    inference_model,
    upscale_array,
    upscale_image,
    upscale_tensor,
)


def tiny_sr_net(scale: int) -> nn.Module:
    """Three 3x3 convs then PixelShuffle: a receptive-field radius of 3 LR pixels."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
        nn.PixelShuffle(scale),
    ).eval()


def test_tiled_output_equals_untiled():
    model = tiny_sr_net(2)
    lr = torch.rand(1, 3, 21, 26)
    whole = upscale_tensor(model, lr, 2)
    tiled = upscale_tensor(model, lr, 2, tile=8, overlap=3)
    assert tiled.shape == (1, 3, 42, 52)
    assert torch.allclose(tiled, whole, atol=1e-6)
    # Without enough overlap the tiles see zero padding at their seams and differ.
    seams = upscale_tensor(model, lr, 2, tile=8, overlap=0)
    assert not torch.allclose(seams, whole, atol=1e-4)


def test_output_is_clamped_to_unit_range():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.PixelShuffle(2))
    nn.init.constant_(model[0].weight, 5.0)
    out = upscale_tensor(model, torch.rand(1, 3, 4, 4) - 0.5, 2)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_model_with_wrong_scale_is_a_user_error():
    with pytest.raises(IsspError, match="x3"):
        upscale_tensor(tiny_sr_net(2), torch.rand(1, 3, 8, 8), 3)


def rgb_image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("model", [None, tiny_sr_net(3)], ids=["bicubic", "model"])
def test_output_size_is_exactly_scale_times_input(model):
    out = upscale_image(model, rgb_image(13, 7), 3, tile=5)
    assert out.mode == "RGB" and out.size == (39, 21)


def test_progress_is_told_before_each_tile():
    told = []
    upscale_image(tiny_sr_net(2), rgb_image(13, 7), 2, tile=5, progress=lambda *a: told.append(a))
    # 13x7 px in 5 px tiles: 3 across, 2 down.
    assert told == [(index / 6, f"tile {index + 1} of 6") for index in range(6)]


GREYSCALE_IMAGES = {
    "L": Image.new("L", (10, 6), 90),
    "1": Image.new("1", (10, 6), 1),
    "I;16": Image.fromarray(np.full((6, 10), 40000, dtype=np.uint16)),
}


@pytest.mark.parametrize("model", [None, tiny_sr_net(2)], ids=["bicubic", "model"])
@pytest.mark.parametrize("mode", GREYSCALE_IMAGES)
def test_greyscale_in_greyscale_out(model, mode):
    out = upscale_image(model, GREYSCALE_IMAGES[mode], 2)
    assert out.mode == "L" and out.size == (20, 12)


def test_alpha_is_upscaled_and_kept():
    img = rgb_image(8, 8).convert("RGBA")
    alpha = np.zeros((8, 8), dtype=np.uint8)
    alpha[:, 4:] = 255
    img.putalpha(Image.fromarray(alpha))
    out = upscale_image(tiny_sr_net(2), img, 2)
    assert out.mode == "RGBA" and out.size == (16, 16)
    out_alpha = np.asarray(out.getchannel("A"))
    assert (out_alpha[:, :6] == 0).all() and (out_alpha[:, 10:] == 255).all()


def test_greyscale_alpha_and_palette_transparency_are_kept():
    la = upscale_image(None, Image.new("LA", (5, 4), (100, 30)), 2)
    assert la.mode == "LA" and la.getpixel((3, 3)) == (100, 30)
    palette = Image.new("P", (5, 4), 0)
    palette.info["transparency"] = 0
    out = upscale_image(None, palette, 2)
    assert out.mode == "RGBA" and out.getpixel((0, 0))[3] == 0


def test_cmyk_comes_back_as_rgb():
    out = upscale_image(None, Image.new("CMYK", (4, 4), (0, 255, 255, 0)), 2)
    assert out.mode == "RGB" and out.getpixel((3, 3)) == (255, 0, 0)


def test_the_bicubic_baseline_is_pillow_s_bicubic():
    img = rgb_image(9, 5)
    assert np.array_equal(
        np.asarray(bicubic_upscale(img, 4)), np.asarray(img.resize((36, 20), Image.BICUBIC))
    )


def test_upscale_array_with_model_keeps_greyscale_layout():
    grey = np.random.default_rng(1).integers(0, 256, (6, 7), dtype=np.uint8)
    out = upscale_array(tiny_sr_net(2), grey, 2)
    assert out.shape == (12, 14) and out.dtype == np.uint8


@pytest.fixture(scope="module")
def pruned_x2():
    """The shipped ISS-P edsr-tiny x2 checkpoint at ratio 0.99, and a 40x56 photo crop."""
    model, _ = load_zoo_model("edsr-tiny", 2, "issp", 0.99)
    photo = to_array(load_image(default_image_paths()[0]).convert("RGB"))
    return model.eval(), to_tensor(photo[200:240, 220:276])[None]


@pytest.fixture
def timed(monkeypatch, tmp_path):
    """inference_model's timings come from ``timed.ms`` (path -> ms, default 1 ms), its
    cache lies in tmp_path; ``timed.calls`` counts the timing runs."""

    class Timings:
        ms: dict[str, float] = {}
        calls = 0

    def fake(candidates, tile):
        Timings.calls += 1
        return {path: Timings.ms.get(path, 1.0) for path in candidates}

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(upscale, "measure_paths", fake)
    return Timings


def test_inference_model_in_float32_equals_the_checkpoint(pruned_x2, timed):
    model, lr = pruned_x2
    timed.ms = {PATH_SPARSE: 1.0, PATH_FP32: 2.0}
    fast = inference_model(model, bf16=False)
    if kernel_error() is None:
        assert fast.path == PATH_SPARSE
        assert fast.describe() == f"{PATH_SPARSE}, 2.00x the fastest dense"
    tile = fast_tile(2) // 4  # several tiles even on a small image
    expected = upscale_tensor(model, lr, 2, tile=tile)
    assert (upscale_tensor(fast, lr, 2, tile=tile) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("fastest", [PATH_FP32, PATH_SPARSE])
def test_the_fastest_timed_path_is_chosen_and_timed_once(pruned_x2, timed, tmp_path, fastest):
    if kernel_error() is not None:
        pytest.skip("no C compiler for the sparse kernel")
    model, _ = pruned_x2
    timed.ms = {fastest: 0.5}
    assert inference_model(model, bf16=False).path == fastest
    assert inference_model(model, bf16=False).path == fastest
    assert timed.calls == 1 and (tmp_path / "issp" / PATHS_FILE).exists()
    # Another checkpoint is timed on its own.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.tail.bias.add_(0.01)
    inference_model(other, bf16=False)
    assert timed.calls == 2


def test_a_damaged_or_unwritable_timing_cache_is_timed_again(pruned_x2, timed, tmp_path):
    model, _ = pruned_x2
    cache = tmp_path / "issp" / PATHS_FILE
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    inference_model(model, bf16=False)
    assert timed.calls == 1 and json.loads(cache.read_text())
    cache.unlink()
    cache.parent.chmod(0o500)
    try:
        assert inference_model(model, bf16=False).path in (PATH_FP32, PATH_SPARSE)
    finally:
        cache.parent.chmod(0o700)
    assert timed.calls == 2


@pytest.mark.skipif(not bf16_available(), reason="no native bfloat16 on this CPU")
def test_bfloat16_path_stays_within_a_few_grey_levels(pruned_x2, timed):
    model, lr = pruned_x2
    timed.ms = {PATH_BF16: 0.5}
    fast = inference_model(model)
    assert fast.path == PATH_BF16
    diff = upscale_tensor(fast, lr, 2) - upscale_tensor(model, lr, 2)
    assert diff.abs().max() <= 3 / 255 and diff.pow(2).mean().sqrt() <= 0.5 / 255


@pytest.fixture
def no_compiler(monkeypatch):
    """The sparse kernel cannot be built: CC names no compiler."""
    monkeypatch.setenv("CC", "no-such-compiler")
    _kernel.cache_clear()
    kernel_error.cache_clear()
    yield
    _kernel.cache_clear()
    kernel_error.cache_clear()


def test_without_a_compiler_pruned_models_run_dense_and_say_why(pruned_x2, no_compiler, caplog):
    model, lr = pruned_x2
    first = inference_model(model, bf16=False)
    second = inference_model(model, bf16=False)
    assert first.path == second.path == PATH_FP32
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "sparse kernel unavailable" in warnings[0] and "C compiler" in warnings[0]
    expected = upscale_tensor(model, lr, 2)
    assert (upscale_tensor(first, lr, 2) - expected).abs().max() <= 1e-5


def test_models_other_than_edsr_run_as_they_are():
    model = tiny_sr_net(2)
    fast = inference_model(model)
    assert fast.path == "dense float32"
    lr = torch.rand(1, 3, 9, 11)
    assert torch.equal(upscale_tensor(fast, lr, 2), upscale_tensor(model, lr, 2))
