from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from issp import IsspError
from issp.data import make_lr
from issp.evaluate import (
    evaluate_arrays,
    evaluate_folder,
    format_table,
    validation_crops,
)
from issp.metrics import psnr, ssim

TEST_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "test"

# Published bicubic PSNR (Y channel, crop_border = scale) that the protocol must reproduce.
PUBLISHED_BICUBIC = {
    ("Set5", 2): 33.66,
    ("Set5", 3): 30.39,
    ("Set5", 4): 28.42,
    ("Set14", 2): 30.24,
    ("Set14", 3): 27.55,
    ("Set14", 4): 26.00,
}


@pytest.fixture
def image_folder(tmp_path):
    yy, xx = np.mgrid[0:40, 0:45]
    waves = [np.sin(yy / 2.0), np.cos(xx / 3.0), np.sin((xx + yy) / 2.5)]
    smooth = np.stack([128 + 100 * w for w in waves], axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "colour.png")
    Image.fromarray(smooth[:, :, 1]).save(tmp_path / "grey.png")
    return tmp_path


def test_evaluate_folder_reports_means_and_per_image_scores(image_folder):
    result = evaluate_folder(None, image_folder, 2)
    assert [r["name"] for r in result["images"]] == ["colour.png", "grey.png"]
    assert result["psnr"] == pytest.approx(np.mean([r["psnr"] for r in result["images"]]))
    assert result["ssim"] == pytest.approx(np.mean([r["ssim"] for r in result["images"]]))
    assert 20 < result["psnr"] < 60 and 0 < result["ssim"] <= 1


def test_greyscale_images_are_scored_on_grey_values(image_folder):
    grey = np.asarray(Image.open(image_folder / "grey.png"))[:40, :44]
    lr = make_lr(grey, 2)
    sr = np.asarray(Image.fromarray(lr).resize((44, 40), Image.BICUBIC))
    row = evaluate_folder(None, image_folder, 2)["images"][1]
    assert row["psnr"] == pytest.approx(psnr(sr, grey, 2))
    assert row["ssim"] == pytest.approx(ssim(sr, grey, 2))


def test_model_path_runs_tiled(image_folder):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    whole = evaluate_folder(model, image_folder, 2)
    tiled = evaluate_folder(model, image_folder, 2, tile=7)
    assert tiled["psnr"] == pytest.approx(whole["psnr"], abs=1e-3)


def test_validation_crops_bound_the_size(image_folder):
    pairs = validation_crops(sorted(image_folder.iterdir()), 3, size=32)
    assert [name for name, _, _ in pairs] == ["colour.png", "grey.png"]
    for _, lr, hr in pairs:
        assert hr.shape[:2] == (30, 30) and lr.shape[:2] == (10, 10)
    assert evaluate_arrays(None, pairs, 3)["psnr"] > 20


def test_empty_evaluation_is_an_error():
    with pytest.raises(IsspError, match="no images"):
        evaluate_arrays(None, [], 2)


def test_images_that_cannot_be_scored_are_left_out_and_named(image_folder):
    Image.new("RGB", (12, 12)).save(image_folder / "tiny.png")
    (image_folder / "text.png").write_text("not an image")
    with pytest.warns(UserWarning) as warned:
        result = evaluate_folder(None, image_folder, 4)
    assert [r["name"] for r in result["images"]] == ["colour.png", "grey.png"]
    text, tiny = result["skipped"]
    assert text["name"] == "text.png" and text["why"].startswith("not a readable image (")
    assert tiny == {"name": "tiny.png", "why": "12x12 is too small to score at x4"}
    assert str(warned[1].message) == "skipping tiny.png: 12x12 is too small to score at x4"
    for name in ("colour.png", "grey.png"):
        (image_folder / name).unlink()
    with (
        pytest.warns(UserWarning),
        pytest.raises(IsspError, match=r"can be scored at x4 \(text.png: not a readable image"),
    ):
        evaluate_folder(None, image_folder, 4)


def test_benchmarks_in_subfolders_get_their_own_means(image_folder):
    for name in ("Set5", "Set14"):
        (image_folder / name).mkdir()
        for image in ("colour.png", "grey.png"):
            (image_folder / name / image).write_bytes((image_folder / image).read_bytes())
    (image_folder / "Set14" / "colour.png").unlink()
    result = evaluate_folder(None, image_folder, 2)
    names = [r["name"] for r in result["images"]]
    assert names == ["Set14/grey.png", "Set5/colour.png", "Set5/grey.png", "colour.png", "grey.png"]
    scores = {r["name"]: r["psnr"] for r in result["images"]}
    assert set(result["folders"]) == {".", "Set14", "Set5"}
    assert result["folders"]["Set5"]["count"] == 2
    assert result["folders"]["Set5"]["psnr"] == pytest.approx(
        (scores["Set5/colour.png"] + scores["Set5/grey.png"]) / 2
    )
    assert result["folders"]["Set14"]["psnr"] == scores["Set14/grey.png"]
    lines = format_table(result).splitlines()
    assert [line.split("  ")[0].strip() for line in lines[-4:]] == [
        "mean of the top level (2)",
        "mean of Set14/ (1)",
        "mean of Set5/ (2)",
        "mean",
    ]
    assert "folders" not in evaluate_folder(None, image_folder / "Set5", 2)


def test_format_table_lists_images_and_mean(image_folder):
    table = format_table(evaluate_folder(None, image_folder, 2))
    lines = table.splitlines()
    assert lines[0].split() == ["image", "PSNR", "SSIM"]
    assert lines[2].startswith("colour.png") and lines[-1].startswith("mean")


@pytest.mark.skipif(not TEST_DATA.is_dir(), reason=f"benchmark images not found at {TEST_DATA}")
@pytest.mark.parametrize(("name", "scale"), PUBLISHED_BICUBIC)
def test_bicubic_reproduces_published_psnr(name, scale):
    result = evaluate_folder(None, TEST_DATA / name, scale)
    assert result["psnr"] == pytest.approx(PUBLISHED_BICUBIC[name, scale], abs=0.1)
