"""``python app.py`` as a hostile client meets it: raw HTTP on Gradio's API routes.

Each test is a regression test for a hole or lock-out once found: files outside the
uploads read through an unmarked ``{"path": ...}`` payload, Gradio's file route, the
training queue filling up for everyone, a broken zoo stopping the server.
"""

import json

import httpx
import pytest
from conftest import photo

pytestmark = pytest.mark.slow

UPLOAD_REFUSED = "that file was not uploaded to this app; upload the image again"
# Every endpoint that takes a file, with valid other arguments after the image.
FILE_ENDPOINTS = {
    "upscale": [2, 0.9, "ISS-P", "edsr-tiny"],
    "evaluate": [2, 0.9, "edsr-tiny"],
}


def call(url: str, api_name: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """POST ``data`` to ``/gradio_api/call/<api_name>`` and read the event stream to its
    end: ``("complete", outputs)`` or ``("error", message)``."""
    response = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    stream_url = f"{url}gradio_api/call/{api_name}/{event_id}"
    event = None
    with httpx.stream("GET", stream_url, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line.removeprefix("data: "))
                return event, data["error"] if event == "error" else data
    raise AssertionError(f"{api_name}: the event stream ended without a result")


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
    with open(tmp_path / "in.png", "rb") as data:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("in.png", data)})
    (path,) = response.json()
    event, outputs = call(url, "upscale", [{"path": path}, *FILE_ENDPOINTS["upscale"]])
    assert event == "complete", outputs
    assert "output 80x60" in outputs[2]


@pytest.mark.parametrize("target", ["/etc/passwd", "app.py", "checkpoints/manifest.json"])
def test_gradio_file_route_serves_nothing_outside_the_app_s_folders(app_server, target):
    from issp.zoo import ROOT

    url, _ = app_server
    path = target if target.startswith("/") else str(ROOT / target)
    response = httpx.get(f"{url}gradio_api/file={path}")
    assert response.status_code == 403
