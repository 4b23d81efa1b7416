"""Upscaling and scoring an upload (webapp.upscaling), against a fake zoo; no server."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures import FAKE_RATIOS, bad_file, make_fake_zoo, photo, png_header_only, run_upscale
from PIL import Image

from issp import IsspError
from issp.upscale import PATH_BF16, PATH_FP32, PATH_SPARSE, fast_tile
from webapp import upscaling
from webapp.files import ResultFolders
from webapp.model_zoo import ModelZoo
from webapp.upscaling import Limits, configure_threads, evaluate, upscale

LIMITS = Limits()


@pytest.mark.parametrize("scale", [2, 4])
def test_upscale_multiplies_size_and_writes_full_png(zoo, tmp_path, scale):
    path = tmp_path / "in.png"
    photo(40, 30).save(path)
    result = run_upscale(zoo, str(path), tmp_path, scale=scale)
    with Image.open(result.download) as img:
        assert img.size == (40 * scale, 30 * scale)
        assert img.format == "PNG"
    for preview in (result.bicubic_preview, result.model_preview):
        assert Image.open(preview).size == (40 * scale, 30 * scale)
    assert f"edsr-tiny_x{scale}_issp_r0.9.safetensors" in result.summary
    for words in ("non-zero weights", "sparse FLOPs", "latency", "1 tile", "thread(s), "):
        assert words in result.summary
    # Which path ran, as inference_model timed it here.
    assert any(path in result.summary for path in (PATH_FP32, PATH_BF16, PATH_SPARSE))


def test_large_output_is_compared_on_a_crop_but_downloaded_whole(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(100, 60).save(path)
    limits = Limits(tile=64, preview_side=64)
    result = upscale(zoo, str(path), 2, 0.5, "IHT", None, limits, tmp_path)
    assert Image.open(result.download).size == (200, 120)
    assert Image.open(result.model_preview).size == (64, 64)
    # Upscaling runs in the measured fastest tiles; Limits.tile bounds evaluation only.
    assert f"1 tile of {fast_tile(2)} px" in result.summary and "crop" in result.summary


def test_alpha_is_kept(zoo, tmp_path):
    path = tmp_path / "rgba.png"
    photo(40, 30, "RGBA").save(path)
    result = run_upscale(zoo, str(path), tmp_path)
    out = Image.open(result.download)
    assert out.mode == "RGBA" and out.size == (80, 60)
    alpha = np.asarray(out.getchannel("A"), dtype=float)
    # The gradient runs top (transparent) to bottom (opaque).
    assert alpha[0].mean() < 20 and alpha[-1].mean() > 235


@pytest.mark.parametrize(
    ("name", "make", "mode", "size"),
    [
        ("grey.png", lambda: photo(40, 30, "L"), "L", (80, 60)),
        ("grey16.png", lambda: Image.fromarray(np.full((30, 40), 40000, np.uint16)), "L", (80, 60)),
        ("palette.png", lambda: photo(40, 30).convert("P"), "RGB", (80, 60)),
        ("cmyk.jpg", lambda: photo(40, 30).convert("CMYK"), "RGB", (80, 60)),
    ],
)
def test_colour_modes_are_handled(zoo, tmp_path, name, make, mode, size):
    path = tmp_path / name
    make().save(path)
    out = Image.open(run_upscale(zoo, str(path), tmp_path).download)
    assert (out.mode, out.size) == (mode, size)


def test_exif_orientation_is_applied(zoo, tmp_path):
    path = tmp_path / "rotated.jpg"
    img = photo(40, 30)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: display rotated by 90 degrees
    img.save(path, exif=exif)
    assert Image.open(run_upscale(zoo, str(path), tmp_path).download).size == (60, 80)


def test_one_pixel_image_upscales(zoo, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "red").save(path)
    assert Image.open(run_upscale(zoo, str(path), tmp_path).download).size == (2, 2)


def test_ratio_snaps_to_the_nearest_checkpoint_and_says_so(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo().save(path)
    result = run_upscale(zoo, str(path), tmp_path, ratio=0.8, method="IHT")
    assert "edsr-tiny_x2_iht_r0.9.safetensors" in result.summary
    assert "nearest available to 0.8" in result.summary
    dense = run_upscale(zoo, str(path), tmp_path, ratio=0.1)
    assert "edsr-tiny_x2_dense.safetensors" in dense.summary


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text.png", "text.png: not a readable image"),
        ("truncated.png", "truncated.png: not a readable image"),
        ("bomb.png", "bomb.png: too large to decode safely"),
        ("big.png", "big.png: 3000x3000 is over the 1,000,000 pixel limit"),
        ("animated.gif", "animated.gif: animated or multi-page images are not supported"),
    ],
)
def test_bad_files_raise_a_clear_user_error(zoo, tmp_path, kind, message):
    path = bad_file(tmp_path, kind)
    with pytest.raises(IsspError) as err:
        run_upscale(zoo, path, tmp_path)
    assert message in str(err.value)
    # The server's temp folder is nobody's business but the server's.
    assert str(tmp_path) not in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"path": None}, "no image: upload one first"),
        ({"method": "L1"}, "unknown method 'L1'; choose one of ISS-P, IHT"),
        ({"ratio": 1.0}, "pruning ratio must be in [0, 1), got 1.0"),
        ({"ratio": -0.1}, "pruning ratio must be in [0, 1)"),
        ({"ratio": float("nan")}, "pruning ratio must be in [0, 1)"),
        ({"ratio": "lots"}, "pruning ratio must be a number"),
        ({"scale": 3}, "the zoo has no x3 checkpoints yet"),
        ({"scale": 5}, "scale must be one of 2, 3, 4"),
        ({"arch": "swinir-tiny"}, "no x2 checkpoints of 'swinir-tiny'; the zoo has edsr-tiny"),
        ({"arch": ["a", "list"]}, "no x2 checkpoints of ['a', 'list']; the zoo has edsr-tiny"),
        # A request is quoted back in at most 80 characters.
        ({"method": "m" * 10**6}, f"unknown method '{'m' * 76}...; choose one of ISS-P, IHT"),
        ({"ratio": "r" * 10**6}, f"pruning ratio must be a number in [0, 1), got '{'r' * 76}..."),
        ({"output_format": "GIF"}, "output format must be one of PNG, WebP, JPEG, got 'GIF'"),
        ({"output_format": None}, "output format must be one of PNG, WebP, JPEG, got None"),
        ({"scale": float("inf")}, "scale must be one of 2, 3, 4, got inf"),
    ],
)
def test_bad_arguments_raise_a_clear_user_error(zoo, tmp_path, args, message):
    path = tmp_path / "in.png"
    photo().save(path)
    request = {"path": str(path), "scale": 2, "ratio": 0.9, "method": "ISS-P", "arch": None}
    request.update(args)
    with pytest.raises(IsspError) as err:
        upscale(zoo, **request, limits=LIMITS, out_dir=tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize(("name", "pillow", "suffix"), [("PNG", "PNG", ".png"),
    ("webp", "WEBP", ".webp"), ("JPEG", "JPEG", ".jpg")])  # fmt: skip
def test_the_download_is_in_the_format_asked_for(zoo, tmp_path, name, pillow, suffix):
    path = tmp_path / "in.png"
    photo(40, 30, "RGBA").save(path)
    result = run_upscale(zoo, str(path), tmp_path, output_format=name)
    assert result.download.suffix == suffix
    with Image.open(result.download) as img:
        assert (img.format, img.size) == (pillow, (80, 60))
        # JPEG has no alpha channel, and the summary says the download lost it.
        assert img.mode == ("RGB" if pillow == "JPEG" else "RGBA")
    assert ("no alpha channel" in result.summary) == (pillow == "JPEG")


def test_webp_keeps_every_pixel_of_the_png(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(40, 30, "RGBA").save(path)
    png, webp = (
        np.asarray(Image.open(run_upscale(zoo, str(path), tmp_path, output_format=fmt).download))
        for fmt in ("PNG", "WebP")
    )
    assert png.shape == (60, 80, 4) and np.array_equal(png, webp)


def test_progress_is_told_per_tile_and_per_model(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(fast_tile(2) + 8, 40).save(path)
    told = []
    run_upscale(zoo, str(path), tmp_path, progress=lambda *a: told.append(a))
    assert told == [(0.0, "tile 1 of 2"), (0.5, "tile 2 of 2")]
    told.clear()
    evaluate(zoo, str(path), 2, 0.9, None, LIMITS, progress=lambda *a: told.append(a))
    names = ["bicubic", "dense", "ISS-P 0.5", "ISS-P 0.9", "IHT 0.5", "IHT 0.9"]
    assert told == [(i / 6, f"scoring {name} ({i + 1} of 6)") for i, name in enumerate(names)]


def test_concurrent_requests_share_one_zoo(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(24, 20).save(path)
    folders = ResultFolders(tmp_path / "results")

    def one(method):
        return upscale(zoo, str(path), 2, 0.5, method, None, LIMITS, folders.new()).size

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(one, ["ISS-P", "IHT", "ISS-P", "IHT"]))
    assert sizes == [(48, 40)] * 4


def test_evaluate_scores_bicubic_dense_issp_and_iht(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    result = evaluate(zoo, str(path), 2, 0.8, None, LIMITS)
    assert [row["model"] for row in result.rows] == ["bicubic", "dense", "ISS-P", "IHT"]
    assert [row["ratio"] for row in result.rows] == [None, 0.0, 0.9, 0.9]
    for row in result.rows:
        assert math.isfinite(row["psnr"]) and 0 < row["ssim"] <= 1
    # One line per method over every ratio it has, starting from the dense model at 0.
    traces = {trace.name: list(trace.x) for trace in result.figure.data}
    assert traces == {"ISS-P": [0.0, *FAKE_RATIOS], "IHT": [0.0, *FAKE_RATIOS]}


def test_evaluate_with_only_a_dense_checkpoint_says_what_is_missing(tmp_path):
    folder = make_fake_zoo(tmp_path / "zoo", scales=(2,))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoints"] = [r for r in manifest["checkpoints"] if r["method"] == "dense"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    result = evaluate(ModelZoo(folder), str(path), 2, 0.9, None, LIMITS)
    assert [row["model"] for row in result.rows] == ["bicubic", "dense"]
    assert "No ISS-P or IHT checkpoints" in result.note


def test_evaluate_rejects_images_too_small_to_score(zoo, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(IsspError, match="at least 15x15 px for x2"):
        evaluate(zoo, str(path), 2, 0.9, None, LIMITS)


def test_evaluate_has_its_own_pixel_limit(zoo, tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_header_only(1000, 1000))
    with pytest.raises(IsspError, match="over the 500,000 pixel limit"):
        evaluate(zoo, str(path), 2, 0.9, None, LIMITS)


@pytest.mark.parametrize(("cpus", "concurrency", "threads"), [(8, 2, 4), (8, 3, 2), (2, 4, 1)])
def test_threads_are_split_between_concurrent_requests(monkeypatch, cpus, concurrency, threads):
    import torch

    monkeypatch.setattr(upscaling, "available_cpus", lambda: cpus)
    before = torch.get_num_threads()
    try:
        assert configure_threads(concurrency=concurrency) == threads
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_an_output_too_wide_for_its_format_is_refused_before_the_work(zoo, tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    photo(4100, 200).save(path)
    monkeypatch.setattr(zoo, "model", lambda *args: pytest.fail("the model was loaded"))
    request = {"scale": 4, "ratio": 0.9, "method": "ISS-P", "arch": None, "limits": LIMITS}
    with pytest.raises(IsspError, match="WebP .* at most 16,383 px a side .* 16,400x800"):
        upscale(zoo, str(path), **request, out_dir=tmp_path, output_format="WebP")
