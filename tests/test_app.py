"""The app's handlers as plain functions (issp.service), against a fake zoo; no server."""

import json
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import FAKE_RATIOS, bad_file, make_fake_zoo, photo, png_header_only
from PIL import Image

from issp import IsspError, service

LIMITS = service.Limits()


@pytest.fixture
def zoo(fake_zoo):
    return service.ModelZoo(fake_zoo)


def run_upscale(zoo, path, tmp_path, scale=2, ratio=0.9, method="ISS-P", arch="edsr-tiny"):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return service.upscale(zoo, path, scale, ratio, method, arch, LIMITS, out)


@pytest.mark.parametrize("scale", [2, 4])
def test_upscale_multiplies_size_and_writes_full_png(zoo, tmp_path, scale):
    path = tmp_path / "in.png"
    photo(40, 30).save(path)
    result = run_upscale(zoo, str(path), tmp_path, scale=scale)
    with Image.open(result.png) as img:
        assert img.size == (40 * scale, 30 * scale)
        assert img.format == "PNG"
    for preview in (result.bicubic_preview, result.model_preview):
        assert Image.open(preview).size == (40 * scale, 30 * scale)
    assert f"edsr-tiny_x{scale}_issp_r0.9.safetensors" in result.summary
    for words in ("non-zero weights", "sparse FLOPs", "latency", "1 tile"):
        assert words in result.summary


def test_large_output_is_compared_on_a_crop_but_downloaded_whole(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(100, 60).save(path)
    limits = service.Limits(tile=64, preview_side=64)
    result = service.upscale(zoo, str(path), 2, 0.5, "IHT", None, limits, tmp_path)
    assert Image.open(result.png).size == (200, 120)
    assert Image.open(result.model_preview).size == (64, 64)
    assert "2 tiles of 64 px" in result.summary and "crop" in result.summary


def test_alpha_is_kept(zoo, tmp_path):
    path = tmp_path / "rgba.png"
    photo(40, 30, "RGBA").save(path)
    result = run_upscale(zoo, str(path), tmp_path)
    out = Image.open(result.png)
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
    out = Image.open(run_upscale(zoo, str(path), tmp_path).png)
    assert (out.mode, out.size) == (mode, size)


def test_exif_orientation_is_applied(zoo, tmp_path):
    path = tmp_path / "rotated.jpg"
    img = photo(40, 30)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: display rotated by 90 degrees
    img.save(path, exif=exif)
    assert Image.open(run_upscale(zoo, str(path), tmp_path).png).size == (60, 80)


def test_one_pixel_image_upscales(zoo, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "red").save(path)
    assert Image.open(run_upscale(zoo, str(path), tmp_path).png).size == (2, 2)


def test_ratio_snaps_to_the_nearest_checkpoint_and_says_so(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo().save(path)
    result = run_upscale(zoo, str(path), tmp_path, ratio=0.8, method="IHT")
    assert "edsr-tiny_x2_iht_r0.9.safetensors" in result.summary
    assert "nearest available to 0.8" in result.summary
    dense = run_upscale(zoo, str(path), tmp_path, ratio=0.1)
    assert "edsr-tiny_x2_dense.safetensors" in dense.summary


def test_choose_model_accepts_family_names_and_both_method_spellings(fake_zoo):
    manifest = service.ModelZoo(fake_zoo).manifest()
    choice = service.choose_model(manifest, "EDSR", 2, "iss-p", 0.9)
    assert (choice.arch, choice.method, choice.ratio) == ("edsr-tiny", "issp", 0.9)
    assert service.choose_model(manifest, None, 4, "IHT", 0.0).method == "dense"


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
    ],
)
def test_bad_arguments_raise_a_clear_user_error(zoo, tmp_path, args, message):
    path = tmp_path / "in.png"
    photo().save(path)
    request = {"path": str(path), "scale": 2, "ratio": 0.9, "method": "ISS-P", "arch": None}
    request.update(args)
    with pytest.raises(IsspError) as err:
        service.upscale(zoo, **request, limits=LIMITS, out_dir=tmp_path)
    assert message in str(err.value)


def test_model_cache_is_bounded_and_reuses_models(fake_zoo):
    zoo = service.ModelZoo(fake_zoo, capacity=2)
    first, _ = zoo.model("edsr-tiny", 2, "issp", 0.9)
    assert zoo.model("edsr-tiny", 2, "issp", 0.9)[0] is first
    for ratio in FAKE_RATIOS:
        zoo.model("edsr-tiny", 2, "iht", ratio)
    assert zoo.cached() == 2
    # The least recently used model was evicted, so it is loaded afresh.
    assert zoo.model("edsr-tiny", 2, "issp", 0.9)[0] is not first


def damage(zoo_dir, corrupt=(), remove=()):
    """Flip the last byte of the files in ``corrupt`` and delete those in ``remove``."""
    for name in corrupt:
        data = bytearray((zoo_dir / name).read_bytes())
        data[-1] ^= 0xFF
        (zoo_dir / name).write_bytes(bytes(data))
    for name in remove:
        (zoo_dir / name).unlink()


def test_zoo_refuses_a_checkpoint_changed_after_the_manifest_was_read(fake_zoo, tmp_path):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    zoo = service.ModelZoo(copy)
    zoo.manifest()
    damage(copy, corrupt=["edsr-tiny_x2_dense.safetensors"])
    with pytest.raises(IsspError) as err:
        zoo.model("edsr-tiny", 2, "dense", 0.0)
    assert str(err.value).startswith(
        "checkpoint edsr-tiny_x2_dense.safetensors cannot be used: "
        "edsr-tiny_x2_dense.safetensors does not match the manifest's sha256"
    )
    assert str(tmp_path) not in str(err.value)


def test_a_damaged_checkpoint_is_left_out_and_the_rest_served(fake_zoo, tmp_path):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    damage(
        copy,
        corrupt=["edsr-tiny_x2_issp_r0.9.safetensors"],
        remove=["edsr-tiny_x2_iht_r0.9.safetensors"],
    )
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checkpoints"].append({"file": "half.safetensors", "arch": "edsr-tiny"})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    zoo = service.ModelZoo(copy)
    assert len(zoo.manifest()["checkpoints"]) == 8
    assert [(p.name, p.reason) for p in zoo.problems()] == [
        ("edsr-tiny_x2_issp_r0.9.safetensors", "does not match the manifest's sha256"),
        ("edsr-tiny_x2_iht_r0.9.safetensors", "is missing"),
        ("manifest record 11", f"lacks one of {', '.join(service.RECORD_FIELDS)}"),
    ]
    assert zoo.status().startswith("Left out of the model zoo: edsr-tiny_x2_issp_r0.9")
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    result = run_upscale(zoo, str(path), tmp_path, ratio=0.9, method="ISS-P")
    assert "edsr-tiny_x2_issp_r0.5.safetensors" in result.summary
    assert "nearest available to 0.9" in result.summary
    rows = service.evaluate(zoo, str(path), 2, 0.9, None, LIMITS).rows
    scored = [(r["model"], r["ratio"]) for r in rows if r["psnr"] is not None]
    marked = [(r["model"], r["ratio"], r["checkpoint"]) for r in rows if r["psnr"] is None]
    assert scored == [("bicubic", None), ("dense", 0.0), ("ISS-P", 0.5), ("IHT", 0.5)]
    assert marked == [
        ("ISS-P", 0.9, "edsr-tiny_x2_issp_r0.9.safetensors does not match the manifest's sha256"),
        ("IHT", 0.9, "edsr-tiny_x2_iht_r0.9.safetensors is missing"),
    ]


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ("{not json", "could not be read (Expecting property name"),
        ('["a list"]', "has no list of checkpoints"),
        (None, "is missing"),
    ],
)
def test_a_broken_manifest_leaves_bicubic_and_says_why(fake_zoo, tmp_path, manifest, reason):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    if manifest is None:
        (copy / "manifest.json").unlink()
    else:
        (copy / "manifest.json").write_text(manifest)
    zoo = service.ModelZoo(copy)
    assert zoo.manifest()["checkpoints"] == []
    status = zoo.status()
    assert status.startswith(f"No checkpoint can be used: zoo/manifest.json {reason}")
    assert status.endswith("Upscaling needs one; Evaluate still scores bicubic.")
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    with pytest.raises(IsspError) as err:
        run_upscale(zoo, str(path), tmp_path)
    assert str(err.value) == f"no x2 model can be used now. {status}"
    result = service.evaluate(zoo, str(path), 2, 0.9, None, LIMITS)
    assert [row["model"] for row in result.rows] == ["bicubic"]
    assert result.note.startswith("Only bicubic is scored: no x2 checkpoint can be used.")


def test_zoo_sees_checkpoints_added_while_it_runs(tmp_path):
    folder = make_fake_zoo(tmp_path / "zoo", scales=(2,))
    manifest_path = folder / "manifest.json"
    full = json.loads(manifest_path.read_text())
    dense_only = [r for r in full["checkpoints"] if r["method"] == "dense"]
    manifest_path.write_text(json.dumps({"checkpoints": dense_only}))
    zoo = service.ModelZoo(folder)
    assert service.choose_model(zoo.manifest(), None, 2, "ISS-P", 0.9).method == "dense"
    manifest_path.write_text(json.dumps(full) + "\n")
    assert service.choose_model(zoo.manifest(), None, 2, "ISS-P", 0.9).ratio == 0.9


def test_concurrent_requests_share_one_zoo(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(24, 20).save(path)
    folders = service.ResultFolders(tmp_path / "results")

    def one(method):
        return service.upscale(zoo, str(path), 2, 0.5, method, None, LIMITS, folders.new()).size

    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(one, ["ISS-P", "IHT", "ISS-P", "IHT"]))
    assert sizes == [(48, 40)] * 4


def test_result_folders_keep_only_the_newest(tmp_path):
    folders = service.ResultFolders(tmp_path, keep=2)
    made = [folders.new() for _ in range(4)]
    assert [p.exists() for p in made] == [False, False, True, True]


def test_evaluate_scores_bicubic_dense_issp_and_iht(zoo, tmp_path):
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    result = service.evaluate(zoo, str(path), 2, 0.8, None, LIMITS)
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
    result = service.evaluate(service.ModelZoo(folder), str(path), 2, 0.9, None, LIMITS)
    assert [row["model"] for row in result.rows] == ["bicubic", "dense"]
    assert "No ISS-P or IHT checkpoints" in result.note


def test_evaluate_rejects_images_too_small_to_score(zoo, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(IsspError, match="at least 15x15 px for x2"):
        service.evaluate(zoo, str(path), 2, 0.9, None, LIMITS)


def test_evaluate_has_its_own_pixel_limit(zoo, tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_header_only(1000, 1000))
    with pytest.raises(IsspError, match="over the 500,000 pixel limit"):
        service.evaluate(zoo, str(path), 2, 0.9, None, LIMITS)


def test_model_options_snap_the_slider_and_never_raise(fake_zoo):
    manifest = service.ModelZoo(fake_zoo).manifest()
    options = service.model_options(manifest, 4, "swinir-tiny", "IHT", 0.6)
    assert options.archs == [("EDSR-style (edsr-tiny)", "edsr-tiny")]
    assert (options.arch, options.ratio) == ("edsr-tiny", 0.5)
    assert "nearest available to 0.6" in options.note
    empty = service.model_options({"checkpoints": []}, 2, "edsr-tiny", "ISS-P", 0.9)
    assert empty.archs == [] and empty.ratio is None
    assert empty.note.startswith("Not available: the zoo has no x2 checkpoints yet")


def test_results_figure_copes_with_empty_partial_and_full_zoos(fake_zoo):
    empty = service.results_figure({"checkpoints": []})
    assert len(empty.data) == 0
    assert "no stored Set5 scores yet" in empty.layout.annotations[0].text

    manifest = service.ModelZoo(fake_zoo).manifest()
    full = service.results_figure(manifest, "nonzeros")
    names = sorted(trace.name for trace in full.data)
    assert names == [f"edsr-tiny x{s} {m}" for s in (2, 4) for m in ("IHT", "ISS-P")]
    assert full.layout.xaxis.type == "log"

    dense_only = {"checkpoints": [r for r in manifest["checkpoints"] if r["method"] == "dense"]}
    assert [t.name for t in service.results_figure(dense_only).data] == [
        "edsr-tiny x2 dense",
        "edsr-tiny x4 dense",
    ]
    assert len(service.results_figure(manifest, test_set="set14").data) == 0
    with pytest.raises(IsspError, match="x axis must be"):
        service.results_figure(manifest, "flops")


def test_results_tab_text(fake_zoo, tmp_path):
    manifest = service.ModelZoo(fake_zoo).manifest()
    rows = service.manifest_rows(manifest)
    assert len(rows) == 10 and list(rows[0]) == list(service.MANIFEST_COLUMNS)
    assert service.results_text(tmp_path / "missing.md") is None
    text = service.provenance(manifest, None)
    assert "python -m issp zoo build" in text and "cpu (fake zoo for tests)" in text
    table = tmp_path / "results.md"
    table.write_text("| model |\n|---|\n")
    assert service.results_text(table) == "| model |\n|---|\n"
    assert "No results table" not in service.provenance(manifest, table)


def test_examples_are_small_crops_of_bundled_photos(tmp_path):
    paths = service.make_examples(tmp_path, count=2, side=96)
    assert len(paths) == 2
    for path in paths:
        assert max(Image.open(path).size) <= 96


def test_threads_are_split_between_concurrent_requests():
    import torch

    before = torch.get_num_threads()
    try:
        assert service.configure_threads(concurrency=64) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_app_wires_named_endpoints_and_shows_user_errors(fake_zoo, tmp_path):
    import gradio as gr

    import app

    demo = app.build_app(
        service.ModelZoo(fake_zoo),
        LIMITS,
        None,
        [],
        service.ResultFolders(tmp_path),
    )
    public = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert {"upscale", "evaluate", "results", "options"} <= set(public)
    # Uploads reach the library undecoded, so its rules and messages apply.
    assert not public["upscale"].preprocess and not public["evaluate"].preprocess
    folder = tmp_path / "uploads"
    folder.mkdir()
    inside = str(folder / "x.png")
    assert app.upload_path({"path": inside, "orig_name": "x.png"}, [folder]) == Path(inside)
    assert app.upload_path(inside, [folder]) == Path(inside)
    assert app.upload_path(None, [folder]) is None
    with pytest.raises(IsspError, match=service.UPLOAD_REFUSED):
        app.upload_path({"path": str(tmp_path / "x.png")}, [folder])

    @app.shown_to_user
    def fails():
        raise IsspError("clear words")

    with pytest.raises(gr.Error, match="clear words"):
        fails()


def test_only_files_inside_the_upload_folders_are_read(tmp_path):
    uploads, outside = tmp_path / "uploads", tmp_path / "outside"
    uploads.mkdir(), outside.mkdir()
    photo().save(outside / "secret.png")
    photo().save(uploads / "in.png")
    (uploads / "link.png").symlink_to(outside / "secret.png")
    assert service.uploaded_file(str(uploads / "in.png"), [uploads]) == uploads / "in.png"
    assert service.uploaded_file("", [uploads]) is None
    refused = [
        str(outside / "secret.png"),
        str(outside / "missing.png"),
        str(uploads / "link.png"),
        str(uploads / ".." / "outside" / "secret.png"),
        "secret.png",
        "/etc/passwd",
        "nul\0byte",
        ["a", "list"],
    ]
    messages = set()
    for path in refused:
        with pytest.raises(IsspError) as err:
            service.uploaded_file(path, [uploads])
        messages.add(str(err.value))
    # One message for all: whether a file exists outside the uploads is not told.
    assert messages == {service.UPLOAD_REFUSED}


def test_user_messages_hold_no_server_paths_and_are_bounded():
    message = service.user_message(
        "/srv/zoo/edsr-tiny_x2_dense.safetensors does not match; see /tmp/ab/c.png: bad"
    )
    assert message == "edsr-tiny_x2_dense.safetensors does not match; see c.png: bad"
    kept = "scale x2/x4, ../up, https://host/a/b.png and 1/2"
    assert service.user_message(kept) == kept
    assert len(service.user_message("x" * 10**6)) == service.MESSAGE_CHARS
    assert service.echo("y" * 10**6) == "'" + "y" * 76 + "..."


def test_work_folders_of_live_servers_stay_and_leftovers_go(tmp_path):
    root = tmp_path / "issp-app"
    leftover = root / "dead-server"
    (leftover / "gradio").mkdir(parents=True)
    (leftover / "gradio" / "big.png").write_bytes(b"x" * 1000)
    (leftover / ".lock").touch()
    with service.work_folder(root) as first:
        assert not leftover.exists(), "no server holds its lock: left by a dead one"
        with service.work_folder(root) as second:
            assert first.is_dir() and second.is_dir() and first != second
        assert first.is_dir() and not second.exists()
    assert not first.exists()


def test_pruning_deletes_the_oldest_files_down_to_the_bound(tmp_path):
    import os

    cache, results = tmp_path / "cache", tmp_path / "results"
    for n in range(6):
        folder = (cache if n % 2 else results) / f"request{n}"
        folder.mkdir(parents=True)
        (folder / "out.png").write_bytes(b"x" * 1000)
        os.utime(folder / "out.png", (1000 + n, 1000 + n))
    example = cache / "example" / "astronaut.png"
    example.parent.mkdir()
    example.write_bytes(b"x" * 1000)
    os.utime(example, (1, 1))
    freed = service.prune_files([cache, results], 2500, keep={str(example)})
    assert freed == 4000
    left = sorted(p.parent.name for p in tmp_path.rglob("*.png"))
    assert left == ["example", "request4", "request5"]
    assert sorted(p.name for p in cache.iterdir()) == ["example", "request5"], "empty folders go"
    assert service.prune_files([cache, results], 2500, keep={str(example)}) == 0


def test_lock_is_not_held_across_requests(zoo):
    # A model fetch must release the zoo's lock, or a second request would wait forever.
    zoo.model("edsr-tiny", 2, "dense", 0.0)
    done = threading.Event()
    threading.Thread(target=lambda: (zoo.manifest(), done.set())).start()
    assert done.wait(5)
