"""``python app.py`` driven through its API with gradio_client, as a user's script would."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures import bad_file, photo
from gradio_client import Client, handle_file
from PIL import Image

from issp import IsspError, catalogue
from webapp.stored_runs import stored_choices

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(app_server):
    url, _ = app_server
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "in.png"
    photo(40, 30).save(path)
    return str(path)


def upscale(client, path, *args, **kwargs):
    return client.predict(handle_file(path), *args, api_name="/upscale", **kwargs)


def test_upscale_returns_an_image_exactly_twice_the_size(client, image):
    png, compare, summary = upscale(client, image, 2, 0.9, "ISS-P")
    assert Image.open(png).size == (80, 60)
    assert [Image.open(p).size for p in compare] == [(80, 60), (80, 60)]
    assert "Checkpoint" in summary and "edsr-tiny_x2" in summary


def test_scale_and_ratio_may_be_sent_as_the_strings_the_schema_shows(client, image):
    # view_api() shows scale as Literal['2', '4']: a client copying it sends strings.
    png, _, _ = upscale(client, image, "2", "0.9", "ISS-P")
    assert Image.open(png).size == (80, 60)


def test_architecture_is_an_optional_last_argument(client, image):
    png, _, _ = upscale(client, image, 2, 0.0, "IHT", "edsr-tiny")
    assert Image.open(png).size == (80, 60)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text.png", "not a readable image"),
        ("truncated.png", "not a readable image"),
        ("bomb.png", "too large to decode safely"),
        ("big.png", "over the 1,000,000 pixel limit"),
        ("animated.gif", "animated or multi-page images are not supported"),
    ],
)
def test_bad_file_gets_an_error_and_the_server_keeps_serving(
    client, image, tmp_path, kind, message
):
    with pytest.raises(Exception, match=message):
        upscale(client, bad_file(tmp_path, kind), 2, 0.9, "ISS-P")
    assert Image.open(upscale(client, image, 2, 0.9, "ISS-P")[0]).size == (80, 60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((2, 0.9, "L1"), "unknown method 'L1'; choose one of ISS-P, IHT"),
        ((2, 1.5, "ISS-P"), r"pruning ratio must be in \[0, 1\), got 1.5"),
        ((2, -0.1, "ISS-P"), r"pruning ratio must be in \[0, 1\)"),
        ((3, 0.9, "ISS-P"), "the zoo has no x3 checkpoints yet"),
        ((2, 0.9, "ISS-P", "edsr-tiny", "GIF"), "output format must be one of PNG, WebP, JPEG"),
    ],
)
def test_bad_argument_gets_an_error_and_the_server_keeps_serving(client, image, args, message):
    with pytest.raises(Exception, match=message):
        upscale(client, image, *args)
    assert Image.open(upscale(client, image, 2, 0.9, "ISS-P")[0]).size == (80, 60)


@pytest.mark.parametrize(
    ("name", "pillow", "suffix"),
    [("PNG", "PNG", ".png"), ("WebP", "WEBP", ".webp"), ("JPEG", "JPEG", ".jpg")],
)
def test_the_download_comes_in_the_format_asked_for(client, image, name, pillow, suffix):
    download, _, _ = upscale(client, image, 2, 0.9, "ISS-P", "edsr-tiny", name)
    assert Path(download).suffix == suffix
    with Image.open(download) as img:
        assert (img.format, img.size) == (pillow, (80, 60))


def test_a_webp_download_holds_exactly_the_png_s_pixels(client, image):
    png, webp = (upscale(client, image, 2, 0.9, "IHT", "edsr-tiny", f)[0] for f in ("PNG", "WebP"))
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(webp)))


def test_empty_upload_gets_an_error(client):
    with pytest.raises(Exception, match="no image: upload one first"):
        client.predict(None, 2, 0.9, "ISS-P", api_name="/upscale")


def test_one_pixel_image_upscales(client, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), "red").save(path)
    assert Image.open(upscale(client, str(path), 2, 0.9, "ISS-P")[0]).size == (2, 2)


def test_upload_over_the_size_limit_is_refused(app_server, client, image, tmp_path):
    path = tmp_path / "large.png"
    path.write_bytes(os.urandom(11 * 1024 * 1024))
    # gradio_client checks the limit the server advertises before uploading...
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        upscale(client, str(path), 2, 0.9, "ISS-P")
    # ...and the server enforces it for anyone who does not.
    url, _ = app_server
    with open(path, "rb") as data:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("large.png", data)})
    assert response.status_code == 413
    assert Image.open(upscale(client, image, 2, 0.9, "ISS-P")[0]).size == (80, 60)


def test_four_concurrent_requests_all_succeed(client, image):
    methods = ["ISS-P", "IHT", "ISS-P", "IHT"]
    with ThreadPoolExecutor(len(methods)) as pool:
        results = list(pool.map(lambda m: upscale(client, image, 2, 0.9, m), methods))
    assert [Image.open(png).size for png, _, _ in results] == [(80, 60)] * 4


def test_evaluate_and_results_endpoints(client, image):
    table, _, note = client.predict(handle_file(image), 2, 0.9, api_name="/evaluate")
    models = [row[0] for row in table["data"]]
    assert models[:2] == ["bicubic", "dense"]
    assert "used as ground truth" in note
    _, provenance, manifest, _ = client.predict("ratio", "set5", api_name="/results")
    assert "python -m issp zoo build" in provenance
    assert manifest["data"], "the results tab lists the zoo's checkpoints"


def test_live_comparison_runs_to_its_summary_and_data(client):
    *figures, status, download = client.predict(
        "edsr-tiny", 2, 0.9, "per layer", 0.99, 10, 0, 0, [], api_name="/train_live"
    )
    assert status.startswith("**Finished** all 10 steps")
    assert "Mask entries flipped: ISS-P" in status
    assert len(figures) == 8 and all(figure["type"] == "plotly" for figure in figures)
    data = json.loads(Path(download).read_text())
    assert data["step"] == 10 and set(data["methods"]) == {"issp", "iht"}


def test_a_live_run_stops_on_request(client):
    job = client.submit(
        "edsr-tiny", 2, 0.9, "per layer", 0.99, 2000, 0, 0, [], api_name="/train_live"
    )
    deadline = time.monotonic() + 60
    while not job.outputs() and not job.done():
        assert time.monotonic() < deadline, "no snapshot within 60 s"
        time.sleep(0.2)
    # The client's session is the run's session, so this stops that run.
    client.predict(api_name="/stop_live")
    status = job.result(timeout=60)[-2]
    assert status.startswith("**Stopped** at step")


def test_live_requests_over_the_limits_are_refused(client):
    with pytest.raises(Exception, match="steps must be from 1 to 2,000"):
        client.predict(
            "edsr-tiny", 2, 0.9, "per layer", 0.99, 5000, 0, 0, [], api_name="/train_live"
        )
    with pytest.raises(Exception, match="a sweep runs at most 2,000 steps in all"):
        client.predict("edsr-tiny", 2, 0.9, 1000, 0, 0, [0.0, 0.99, 0.5], api_name="/alpha_sweep")


def test_stored_dynamics_show_the_zoo_s_stored_runs(app_server, client):
    _, zoo_dir = app_server
    stored = stored_choices(catalogue.telemetry_folder(zoo_dir))
    *_, status = client.predict(None, api_name="/stored_settings")
    assert ("Mask entries flipped" if stored else "No stored dynamics yet") in status


SET5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "test" / "Set5"


def test_real_iss_p_model_beats_bicubic_on_a_downscaled_set5_image(app_server, client, tmp_path):
    from issp.catalogue import load_manifest
    from issp.data import bicubic_resize, load_image, make_lr, modcrop, to_rgb_array
    from issp.metrics import psnr

    url, zoo_dir = app_server
    try:
        load_manifest(zoo_dir / "manifest.json").find("edsr-tiny", 2, "issp", 0.9)
    except IsspError:
        pytest.skip("the zoo has no trained ISS-P x2 checkpoint at ratio 0.9 yet")
    if not SET5.is_dir():
        pytest.skip("needs ../shared/data/test/Set5")
    hr = modcrop(to_rgb_array(load_image(SET5 / "butterfly.png")), 2)
    lr = make_lr(hr, 2)
    Image.fromarray(lr).save(tmp_path / "lr.png")
    png, _, summary = upscale(client, str(tmp_path / "lr.png"), 2, 0.9, "ISS-P")
    assert "issp_r0.9" in summary
    model_psnr = psnr(np.asarray(Image.open(png).convert("RGB")), hr, crop_border=2)
    bicubic = bicubic_resize(lr, (hr.shape[1], hr.shape[0]))
    bicubic_psnr = psnr(bicubic, hr, crop_border=2)
    assert model_psnr > bicubic_psnr + 0.5
