import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from analysis.lockstep import MAX_STEPS
from issp import catalogue
from issp.checkpoint import read_metadata, save_checkpoint
from issp.cli import main
from issp.models import build_model
from issp.prunable import prunable_weights
from issp.selection import smallest_mask
from issp.train import PROTOCOLS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("edsr-tiny", 2)
    weights = prunable_weights(model)
    with torch.no_grad():
        for w in weights.values():
            w.masked_fill_(smallest_mask(w, math.ceil(0.9 * w.numel())), 0)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    meta = {"preset": "edsr-tiny", "scale": 2, "method": "issp", "ratio": 0.9, "alpha": 0.99}
    save_checkpoint(path, model, meta, list(weights))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_info_json_lists_pruned_layers_with_their_nonzeros(checkpoint, capsys):
    assert main(["info", str(checkpoint), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["flops_sparse"] < info["flops_dense"]
    for layer in info["layers"]:
        assert layer["nonzeros"] == layer["numel"] - math.ceil(0.9 * layer["numel"])
    assert main(["info", str(checkpoint)]) == 0
    assert "non-zero" in capsys.readouterr().out


def test_eval_bicubic_and_checkpoint_write_json(images, checkpoint, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert (
        main(["eval", "--bicubic", "--data", str(images), "--scale", "2", "--json", str(out)]) == 0
    )
    result = json.loads(out.read_text())
    assert set(result) >= {"psnr", "ssim", "images"} and len(result["images"]) == 2
    assert (
        main(["eval", "--checkpoint", str(checkpoint), "--data", str(images), "--scale", "2"]) == 0
    )
    assert "mean" in capsys.readouterr().out


def test_eval_names_what_it_skips_and_writes_an_infinite_psnr_as_null(images, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    Image.new("RGB", (40, 36), (90, 120, 30)).save(folder / "flat.png")  # bicubic is exact
    (folder / "text.png").write_text("not an image")
    out = tmp_path / "r.json"
    args = ["eval", "--bicubic", "--data", str(folder), "--scale", "2", "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    warned = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and warned[0].startswith("warning: skipping text.png: not a readable")
    result = json.loads(out.read_text())  # strict JSON: no Infinity
    assert [r["psnr"] for r in result["images"] if r["name"] == "flat.png"] == [None]
    assert result["psnr"] is None and result["skipped"][0]["name"] == "text.png"
    assert "inf" in printed.out


def test_train_warns_of_a_skipped_image_in_one_line(photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "text.png").write_text("not an image")
    args = ["train", "--steps", "2", "--batch-size", "2", "--patch", "16", "--workers", "0"]
    out = tmp_path / "run.safetensors"
    assert main([*args, "--data", str(folder), "--val", str(photos), "--out", str(out)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "text.png" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: skipping an image: ")


def test_upscale_writes_an_image_twice_the_size_and_keeps_alpha(checkpoint, tmp_path):
    rgba = Image.new("RGBA", (21, 17), (200, 100, 50, 128))
    rgba.save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--checkpoint",
                 str(checkpoint), "--tile", "8"]) == 0  # fmt: skip
    result = Image.open(out)
    assert result.size == (42, 34) and result.mode == "RGBA"


def test_upscale_without_output_writes_input_name_x_scale_png_here(
    checkpoint, tmp_path, monkeypatch
):
    Image.new("RGB", (21, 17)).save(tmp_path / "photo.jpg")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["upscale", str(tmp_path / "photo.jpg"), "--checkpoint", str(checkpoint)]) == 0
    written = Image.open(tmp_path / "elsewhere" / "photo_x2.png")
    assert written.format == "PNG" and written.size == (42, 34)


def test_upscale_writes_webp_lossless_and_jpeg_at_quality_95_by_suffix(checkpoint, tmp_path):
    Image.new("RGB", (21, 17), (200, 100, 50)).save(tmp_path / "in.png")
    written = {}
    for suffix in (".png", ".webp", ".jpg"):
        out = tmp_path / f"out{suffix}"
        assert main(["upscale", str(tmp_path / "in.png"), "-o", str(out), "--checkpoint",
                     str(checkpoint), "--tile", "8"]) == 0  # fmt: skip
        written[suffix] = Image.open(out)
    assert [im.format for im in written.values()] == ["PNG", "WEBP", "JPEG"]
    # The same pixels as the PNG: WebP lossless, not Pillow's lossy default.
    assert np.array_equal(np.asarray(written[".webp"]), np.asarray(written[".png"]))
    # Quality 95, not Pillow's default 75: the file carries quality 95's quantization tables.
    reference = io.BytesIO()
    written[".png"].save(reference, "JPEG", quality=95)
    assert written[".jpg"].quantization == Image.open(reference).quantization
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.gif"),
                 "--checkpoint", str(checkpoint)]) == 2  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--ratio", "1.0", "--out", "x"], "ratio must be in [0, 1)"),
        (["train", "--ratio", "-0.5", "--out", "x"], "ratio must be in [0, 1)"),
        (["train", "--alpha", "1", "--out", "x"], "alpha must be in (0, 1)"),
        (["train", "--scale", "5", "--out", "x"], "invalid choice"),
        (["train", "--data", "/no/such/dir", "--out", "x"], "no such file"),
        (["train", "--steps", "10", "--prune-steps", "20", "--out", "x"], "prune-steps"),
        (["eval", "--bicubic", "--data", "/no/such/dir", "--scale", "2"], "no such file"),
        (["upscale", "/no/such.png", "-o", "o.png", "--scale", "2", "--ratio", "0.9"], "no such"),
        (["train", "--device", "gpu0", "--out", "x"], "unknown device 'gpu0'"),
        (["train", "--workers", "-1", "--out", "x"], "workers and seed must be >= 0"),
        (["train", "--seed", "-1", "--out", "x"], "workers and seed must be >= 0"),
        (["study", "report", "--scales", "8", "--steps", "100"], "--scales must be among"),
        (["study", "report", "--scales", "2", "--steps", "0"], "--steps must be positive"),
        (["zoo", "verify", "--zoo", "/no/such/zoo"], "no zoo to verify"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_files_and_mismatched_checkpoints_exit_2(checkpoint, tmp_path, capsys):
    (tmp_path / "fake.png").write_text("not an image")
    (tmp_path / "fake.safetensors").write_text("not a checkpoint")
    cases = [
        ["upscale", str(tmp_path / "fake.png"), "-o", str(tmp_path / "o.png"),
         "--checkpoint", str(checkpoint)],
        ["info", str(tmp_path / "fake.safetensors")],
        ["eval", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--scale", "4"],
        ["eval", "--checkpoint", str(tmp_path / "fake.png"), "--data", str(tmp_path),
         "--scale", "2"],
    ]  # fmt: skip
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()


def test_outputs_that_cannot_be_written_and_damaged_files_exit_2_before_the_work(
    checkpoint, images, tmp_path, capsys
):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder.png").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    header_only = {"format": "issp-sparse-v1", "preset": "edsr-tiny", "scale": "2"}
    for name, extra in (("bad-json", {"shapes": "{bad", "pruned_layers": "[]"}), ("no-shapes", {})):
        save_file({"x": torch.zeros(1)}, tmp_path / f"{name}.safetensors", header_only | extra)
    run = tmp_path / "run.safetensors"
    Path(f"{run}.state.pt").write_bytes(b"not a torch state")
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "manifest.json").write_text("{not json")
    cases = {
        "cannot write": ["eval", "--bicubic", "--data", str(images), "--scale", "2",
                         "--json", str(tmp_path / "a-file" / "x.json")],
        "is a folder": ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "folder.png"),
                        "--checkpoint", str(checkpoint)],
        "corrupt metadata": ["info", str(tmp_path / "bad-json.safetensors")],
        "metadata lacks shapes, pruned_layers": ["info", str(tmp_path / "no-shapes.safetensors")],
        "not a readable training state": ["train", "--steps", "4", "--batch-size", "2",
                                          "--patch", "16", "--workers", "0", "--data",
                                          str(images), "--out", str(run), "--resume"],
        "could not be read": ["zoo", "verify", "--zoo", str(tmp_path / "zoo")],
    }  # fmt: skip
    for message, args in cases.items():
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # Nothing half-written was left behind by the refused runs.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not run.exists()


def test_upscale_without_a_zoo_says_how_to_point_at_one(tmp_path, monkeypatch, capsys):
    # As from a wheel install: no ISSP_ZOO_DIR, no checkout's checkpoints/.
    monkeypatch.delenv(catalogue.ZOO_ENV, raising=False)
    monkeypatch.setattr(catalogue, "ZOO_DIR", tmp_path / "checkpoints")
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    args = ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png")]
    assert main([*args, "--scale", "2", "--ratio", "0.9"]) == 2
    assert capsys.readouterr().err == f"error: {catalogue.NO_ZOO}\n"


def test_analyze_and_plot_outside_a_checkout_say_they_need_one(monkeypatch, capsys):
    # As from a wheel install, which does not ship analysis/: it cannot be imported.
    monkeypatch.setitem(sys.modules, "analysis", None)
    for args in (["analyze", "--json", "x.json"], ["plot", __file__, "--out", "figures"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "needs a source checkout" in err and err.count("\n") == 1


@pytest.mark.slow
def test_module_entry_point_prints_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "issp", "info", "/no/such.safetensors"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "no such file" in done.stderr


def test_cli_analyze_then_plot(photos, tmp_path, capsys):
    out = tmp_path / "run.json"
    args = ["analyze", "--steps", "4", "--batch-size", "2", "--patch", "8", "--val-every", "2"]
    assert main([*args, "--data", str(photos), "--json", str(out)]) == 0
    assert "Mask entries flipped" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [len(m["loss"]) for m in data["methods"].values()] == [4, 4]
    assert main(["plot", str(out), "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "dynamics.html").exists()
    assert (tmp_path / "figures" / "flips.png").exists()


def test_train_defaults_to_the_protocol_the_study_and_zoo_use(photos, tmp_path):
    out = tmp_path / "run.safetensors"
    args = ["train", "--steps", "4", "--batch-size", "2", "--patch", "8", "--workers", "0"]
    assert main([*args, "--data", str(photos), "--val-every", "4", "--out", str(out)]) == 0
    meta = read_metadata(out)
    two_stage = PROTOCOLS["two-stage"]
    assert meta["protocol"] == "two-stage" and meta["schedule"] == "two-stage"
    assert float(meta["lr"]) == two_stage.lr and float(meta["alpha"]) == two_stage.alpha
    assert meta["prune_steps"] == "1"  # a quarter of the steps


@pytest.mark.parametrize(
    ("args", "described"),
    [
        (["--arch", "swinir-tiny", "--pattern", "19:20"], "method=issp  ratio=0.95  pattern=19:20"),
        (["--method", "greg", "--ratio", "0.95"], "method=greg  ratio=0.95  pattern=per layer"),
    ],
)
def test_train_takes_an_n_m_pattern_and_greg_and_info_describes_them(
    photos, tmp_path, capsys, args, described
):
    out = tmp_path / "run.safetensors"
    common = ["train", "--steps", "4", "--batch-size", "2", "--patch", "16", "--workers", "0"]
    assert main([*common, *args, "--data", str(photos), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert described in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--pattern", "19:20", "--ratio", "0.9", "--out", "x.safetensors"],
        ["train", "--pattern", "2:4", "--method", "scratch", "--out", "x.safetensors"],
        ["train", "--pattern", "4:2", "--out", "x.safetensors"],
        ["analyze", "--ratio", "1.5", "--json", "x.json"],
        ["analyze", "--methods", "issp,magic", "--json", "x.json"],
        ["analyze", "--steps", str(MAX_STEPS + 1), "--json", "x.json"],
        ["analyze", "--steps", "10"],
        ["plot", "missing.json", "--out", "figures"],
    ],
)
def test_cli_rejects_bad_arguments_with_exit_code_2(args, capsys):
    assert main(args) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_plot_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["plot", str(tmp_path / "bad.json"), "--out", str(tmp_path)]) == 2
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert main(["plot", str(tmp_path / "other.json"), "--out", str(tmp_path)]) == 2


def test_output_into_a_closed_pipe_ends_quietly_without_a_traceback():
    # `issp info ... | head -1`: the reader has gone before issp writes.
    read, write = os.pipe()
    os.close(read)
    shipped = sorted((ROOT / "checkpoints").glob("swinir-tiny_*.safetensors"))[0]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "issp", "info", str(shipped)],
            stdout=write,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=120,
        )
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr.decode()[-500:]
    assert done.stderr == b""
