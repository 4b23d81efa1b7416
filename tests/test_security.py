"""``python app.py`` as a hostile client meets it: raw HTTP on Gradio's API routes.

Each test is a regression test for a hole or lock-out once found: files outside the
uploads read through an unmarked ``{"path": ...}`` payload, Gradio's file route, the
training queue filling up for everyone, a broken zoo stopping the server.
"""

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fixtures import photo, write_stored_run
from gradio_client import Client
from PIL import Image

from benchmarks.load import app_process, call, events, submit, upload

pytestmark = pytest.mark.slow

UPLOAD_REFUSED = "that file was not uploaded to this app; upload the image again"
# Every endpoint that takes a file, with valid other arguments after the image.
FILE_ENDPOINTS = {
    "upscale": [2, 0.9, "ISS-P", "edsr-tiny", "PNG"],
    "evaluate": [2, 0.9, "edsr-tiny"],
}


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """Files the server can read but nobody uploaded: an image and a text file."""
    folder = tmp_path_factory.mktemp("outside")
    photo(40, 30).save(folder / "secret.png")
    (folder / "secret.txt").write_text("password")
    return folder


@pytest.mark.parametrize("api_name", list(FILE_ENDPOINTS))
@pytest.mark.parametrize("marked", [False, True], ids=["unmarked", "file-marked"])
def test_no_endpoint_reads_a_file_outside_the_uploads(app_server, outside, api_name, marked):
    url, _ = app_server
    answers = []
    for name in ("secret.png", "secret.txt", "missing.png"):
        payload = {"path": str(outside / name)}
        if marked:
            payload["meta"] = {"_type": "gradio.FileData"}
        answers.append(call(url, api_name, [payload, *FILE_ENDPOINTS[api_name]]))
    events = {event for event, _ in answers}
    messages = {json.dumps(message) for _, message in answers}
    assert events == {"error"}, f"{api_name} answered {answers}"
    # The same answer whether the file exists, is an image or not: nothing is learnt.
    assert len(messages) == 1
    if not marked:
        # (Gradio itself refuses a marked path, with a generic error.)
        assert messages == {json.dumps(UPLOAD_REFUSED)}
    assert str(outside) not in json.dumps(answers)


def test_an_uploaded_file_is_still_read(app_server, tmp_path):
    url, _ = app_server
    photo(40, 30).save(tmp_path / "in.png")
    path = upload(url, tmp_path / "in.png")
    event, outputs = call(url, "upscale", [{"path": path}, *FILE_ENDPOINTS["upscale"]])
    assert event == "complete", outputs
    assert "output 80x60" in outputs[2]


@pytest.mark.parametrize("target", ["/etc/passwd", "app.py", "checkpoints/manifest.json"])
def test_gradio_file_route_serves_nothing_outside_the_app_s_folders(app_server, target):
    from issp.catalogue import ROOT

    url, _ = app_server
    path = target if target.startswith("/") else str(ROOT / target)
    response = httpx.get(f"{url}gradio_api/file={path}")
    assert response.status_code == 403


def test_forty_training_requests_leave_room_for_upscaling(app_server, tmp_path):
    url, _ = app_server
    sessions = [f"trainer-{n}" for n in range(40)]
    # Each from its own session, as 40 clients' would be; long runs, so none ends here.
    submitted = [
        (
            session,
            submit(
                url, "train_live", ["edsr-tiny", 2, 0.9, "per layer", 0.99, 2000, 0, 0, []], session
            ),
        )
        for session in sessions
    ]
    try:
        photo(40, 30).save(tmp_path / "in.png")
        path = upload(url, tmp_path / "in.png")
        event, outputs = call(url, "upscale", [{"path": path}, *FILE_ENDPOINTS["upscale"]])
        assert event == "complete", outputs
        assert "output 80x60" in outputs[2]
        first = [next(events(url, "train_live", event_id)) for _, event_id in submitted]
    finally:
        for session in sessions:
            call(url, "stop_live", [], session)
    refused = [data for event, data in first if event == "error"]
    admitted = [data for event, data in first if event == "generating"]
    assert len(admitted) == 4 and len(refused) == 36, first
    assert set(refused) == {
        "the server is busy training: 4 runs are running or waiting, the most it takes "
        "at once; try again when one has finished"
    }
    statuses = [data[-2] for data in admitted]
    assert sum(status.startswith("**Waiting:**") for status in statuses) == 3


HUGE = "z" * 10**6


@pytest.mark.parametrize(
    ("api_name", "data"),
    [
        ("upscale", [None, 2, 0.9, HUGE, "edsr-tiny", "PNG"]),
        ("evaluate", [None, 2, 0.9, HUGE]),
        ("train_live", [HUGE, 2, 0.9, "per layer", 0.99, 10, 0, 0, []]),
        ("train_live", ["edsr-tiny", 2, 0.9, "per layer", 0.99, 10, 0, 0, [HUGE]]),
        ("train_live", ["edsr-tiny", 2, 0.9, HUGE, 0.99, 10, 0, 0, []]),
        ("alpha_sweep", ["edsr-tiny", 2, 0.9, 10, 0, 0, HUGE]),
        ("stored", [HUGE]),
        ("results", [HUGE, "set5"]),
        ("options", [2, HUGE, "ISS-P", 0.9]),
    ],
)
def test_a_megabyte_argument_is_not_sent_back(app_server, api_name, data):
    url, _ = app_server
    event, answer = call(url, api_name, data)
    assert event == ("complete" if api_name == "options" else "error"), answer
    assert answer is not None and len(json.dumps(answer)) < 20_000
    assert "z" * 81 not in json.dumps(answer)


def test_a_seed_past_2_to_the_63_gets_a_clear_message(app_server):
    url, _ = app_server
    event, message = call(
        url, "train_live", ["edsr-tiny", 2, 0.9, "per layer", 0.99, 10, 0, 2**64, []]
    )
    assert (event, message) == (
        "error",
        "seed must be from 0 to 2,147,483,647, got 18446744073709551616",
    )


@pytest.fixture(scope="module")
def own_zoo_app(fake_zoo, tmp_path_factory):
    """An app of its own, on a copy of the fake zoo with stored dynamics, one checkpoint
    missing and one corrupt."""
    folder = tmp_path_factory.mktemp("own")
    zoo = shutil.copytree(fake_zoo, folder / "zoo")
    (zoo / "telemetry").mkdir()
    for method, ratio in (("issp", 0.9), ("iht", 0.9), ("issp", 0.5), ("iht", 0.5)):
        write_stored_run(zoo / "telemetry", method, ratio)
    (zoo / "edsr-tiny_x2_iht_r0.9.safetensors").unlink()
    (zoo / "edsr-tiny_x2_issp_r0.9.safetensors").write_bytes(b"not a checkpoint")
    with app_process(zoo, folder / "app.log") as (url, _):
        yield url


def shown_status(url: str) -> str:
    """The zoo status line the page shows, from the app's config as a browser reads it."""
    config = httpx.get(f"{url}config").json()
    (status,) = [c for c in config["components"] if c["props"].get("elem_id") == "zoo-status"]
    return status["props"]["value"]


def test_a_fresh_api_session_can_pick_any_stored_setting_the_ui_lists(own_zoo_app):
    client = Client(own_zoo_app, verbose=False)
    (choice,) = client.view_api(print_info=False, return_format="dict")["named_endpoints"][
        "/stored"
    ]["parameters"]
    listed = choice["type"]["enum"]
    assert listed == ["edsr-tiny x2, ratio 0.5", "edsr-tiny x2, ratio 0.9"]
    for label in listed:
        *figures, status = client.predict(label, api_name="/stored")
        assert "Mask entries flipped: ISS-P" in status
        assert all(figure["type"] == "plotly" for figure in figures)
    with pytest.raises(Exception, match="no stored run 'edsr-tiny x4, ratio 0.5'"):
        client.predict("edsr-tiny x4, ratio 0.5", api_name="/stored")


def test_a_damaged_checkpoint_is_shown_left_out_and_marked_by_evaluate(own_zoo_app, tmp_path):
    assert shown_status(own_zoo_app) == (
        "**Model zoo:** Left out of the model zoo: edsr-tiny_x2_issp_r0.9.safetensors does "
        "not match the manifest's sha256; edsr-tiny_x2_iht_r0.9.safetensors is missing. "
        "The other checkpoints are served."
    )
    photo(48, 40).save(tmp_path / "in.png")
    image = {"path": upload(own_zoo_app, tmp_path / "in.png")}
    event, (png, _, summary) = call(own_zoo_app, "upscale", [image, *FILE_ENDPOINTS["upscale"]])
    assert event == "complete" and "edsr-tiny_x2_issp_r0.5.safetensors" in summary
    event, (table, _, note) = call(own_zoo_app, "evaluate", [image, *FILE_ENDPOINTS["evaluate"]])
    assert event == "complete", table
    # The table's empty cells arrive as NaN.
    rows = {(row[0], None if math.isnan(row[1]) else row[1]): row for row in table["data"]}
    assert set(rows) == {
        ("bicubic", None),
        ("dense", 0.0),
        ("ISS-P", 0.5),
        ("IHT", 0.5),
        ("ISS-P", 0.9),
        ("IHT", 0.9),
    }
    assert rows[("IHT", 0.9)][2] == "edsr-tiny_x2_iht_r0.9.safetensors is missing"
    assert math.isnan(rows[("IHT", 0.9)][3]) and rows[("ISS-P", 0.5)][3] > 0


def test_the_app_starts_with_a_corrupt_manifest_and_says_so(fake_zoo, tmp_path):
    zoo = shutil.copytree(fake_zoo, tmp_path / "zoo")
    (zoo / "manifest.json").write_text('{"checkpoints": [')
    with app_process(zoo, tmp_path / "app.log") as (url, _):
        reason = "zoo/manifest.json could not be read (Expecting value: line 1 column 18"
        assert shown_status(url).startswith(f"**Model zoo:** No checkpoint can be used: {reason}")
        photo(48, 40).save(tmp_path / "in.png")
        image = {"path": upload(url, tmp_path / "in.png")}
        event, message = call(url, "upscale", [image, *FILE_ENDPOINTS["upscale"]])
        assert event == "error"
        expected = f"no x2 model can be used now. No checkpoint can be used: {reason}"
        assert message.startswith(expected)
        assert message.endswith("Upscaling needs one; Evaluate still scores bicubic.")
        event, (table, _, note) = call(url, "evaluate", [image, *FILE_ENDPOINTS["evaluate"]])
        assert event == "complete" and [row[0] for row in table["data"]] == ["bicubic"]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_is_bounded_at_the_door_and_a_killed_server_s_files_are_removed_on_restart(
    fake_zoo, tmp_path
):
    temp, system_temp = tmp_path / "temp", tmp_path / "system-temp"
    system_temp.mkdir()
    # A client's share: 1 MB. GRADIO_TEMP_DIR outside the system's temp folder, as on a
    # server with its own disk: the results must still be served from there.
    env = {"GRADIO_TEMP_DIR": str(temp), "TMPDIR": str(system_temp), "ISSP_DISK_MB": "4"}
    with app_process(fake_zoo, tmp_path / "first.log", env) as (url, process):
        (work,) = [p for p in (temp / "issp-app").iterdir() if p.is_dir()]
        # Noise does not compress: 0.75 MB a file, each different (Gradio stores a file
        # once however often it is sent). One client, then one per proxy address.
        answers = []
        for n, client in enumerate(["", "", *(f"10.0.0.{n}" for n in range(8))]):
            noise = np.random.default_rng(n).integers(0, 256, (500, 500, 3), dtype=np.uint8)
            Image.fromarray(noise).save(tmp_path / "noise.png")
            with open(tmp_path / "noise.png", "rb") as data:
                headers = {"X-Forwarded-For": f"6.6.6.6, {client}"} if client else {}
                # Named as the app's own lock files once were, which the bound skipped.
                files = {"files": (".lock" if n % 2 else "noise.png", data)}
                answers.append(httpx.post(f"{url}gradio_api/upload", files=files, headers=headers))
            assert folder_bytes(work / "gradio") + folder_bytes(work / "results") <= 4 * 2**20
        assert answers[0].status_code == 200
        assert answers[1].status_code == 413 and "the most one user may" in answers[1].text
        refused = [a for a in answers[2:] if a.status_code == 413]
        assert refused and all("upload space is full" in a.text for a in refused)
        assert sum(a.status_code == 200 for a in answers) >= 4, "room was used, not wasted"
        # The first user's upload outlived the burst of others' that filled the folder.
        first = {"path": answers[0].json()[0]}
        assert call(url, "upscale", [first, *FILE_ENDPOINTS["upscale"]])[0] == "complete"
        process.kill()
        process.wait()
    assert work.is_dir(), "kill -9 leaves the folder behind"
    with app_process(fake_zoo, tmp_path / "second.log", env) as (url, _):
        assert not work.exists(), "the next server removes it"
        (work,) = [p for p in (temp / "issp-app").iterdir() if p.is_dir()]
    assert not work.exists(), "a server stopped with SIGTERM removes its own"


def test_a_folder_named_as_an_upload_leaves_gradio_s_cleanup_and_shutdown_clean(fake_zoo, tmp_path):
    photo(48, 40).save(tmp_path / "in.png")
    log = tmp_path / "app.log"
    with app_process(fake_zoo, log, {"GRADIO_TEMP_DIR": str(tmp_path / "temp")}) as (url, _):
        folder = str(Path(upload(url, tmp_path / "in.png")).parent.parent)
        image = {"path": folder, "meta": {"_type": "gradio.FileData"}}
        event, message = call(url, "upscale", [image, *FILE_ENDPOINTS["upscale"]])
        assert event == "error" and "image file not found" in message
    assert "shutdown failed" not in log.read_text() and "IsADirectoryError" not in log.read_text()
