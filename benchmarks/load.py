"""Upscaling latency while training requests pile up: a bounded loopback load test.

    python -m benchmarks.load [--clients 4] [--requests 10] [--trainers 8] [--url URL]

Without ``--url`` it starts ``python app.py`` on a free loopback port (the shipped zoo)
and stops it at the end. ``--trainers`` live-training requests (300 steps, each from its
own session, as separate users' would be) are submitted first; then ``--clients``
clients each send ``--requests`` x2 upscales of a 128 px image, one after the other, and
every training run is stopped. Prints the machine, upscale latency (p50, p95, max, from
submission to answer), how many upscales were refused or failed, and how many training
requests were admitted or refused. It sends at most clients x requests + 2 x trainers + 1
requests and gives up after ``--timeout`` seconds, and only to a loopback address.

The functions that speak Gradio's HTTP API (``submit``, ``events``, ``call``,
``upload``) and start a server (``app_process``) are the ones tests/test_security.py uses.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from issp.machine import machine_description

ROOT = Path(__file__).resolve().parents[1]
TRAIN_REQUEST = ["edsr-tiny", 2, 0.9, "per layer", 0.99, 300, 0, 0, []]
UPSCALE_ARGS = [2, 0.9, "ISS-P", "edsr-tiny", "PNG"]


def submit(url: str, api_name: str, data: list, session_hash: str | None = None) -> str:
    """POST ``data`` to ``/gradio_api/call/<api_name>``; returns the event id.

    Raises ``httpx.HTTPStatusError`` when the server refuses it outright (a full queue
    answers 503).
    """
    body: dict = {"data": data}
    if session_hash is not None:
        body["session_hash"] = session_hash
    response = httpx.post(f"{url}gradio_api/call/{api_name}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()["event_id"]


def events(url: str, api_name: str, event_id: str, timeout: float = 300) -> Iterator[tuple]:
    """The ``(event, data)`` pairs of an event's stream as they come; an error's data is
    its message (None when Gradio hides it)."""
    stream_url = f"{url}gradio_api/call/{api_name}/{event_id}"
    event = None
    with httpx.stream("GET", stream_url, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event != "heartbeat":
                data = json.loads(line.removeprefix("data: "))
                yield event, data["error"] if event == "error" else data


def call(
    url: str, api_name: str, data: list, session_hash: str | None = None, timeout: float = 300
) -> tuple:
    """Call an endpoint and wait: ``("complete", outputs)`` or ``("error", message)``."""
    event_id = submit(url, api_name, data, session_hash)
    for event, answer in events(url, api_name, event_id, timeout):
        if event in ("complete", "error"):
            return event, answer
    raise RuntimeError(f"{api_name}: the event stream ended without a result")


def upload(url: str, path: Path) -> str:
    """Upload a file as the browser does; returns its path on the server."""
    with open(path, "rb") as data:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, data)})
    response.raise_for_status()
    return response.json()[0]


def free_port() -> int:
    """A loopback TCP port nobody is listening on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_process(
    zoo_dir: Path, log: Path, env: dict[str, str] | None = None, wait: float = 60
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python app.py`` on a free loopback port; yields its URL and process, and stops it
    (SIGTERM, then SIGKILL after 10 s) on leaving. RuntimeError with the server's output if
    it exits or is not up within ``wait`` seconds."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "ISSP_ZOO_DIR": str(zoo_dir),
        "GRADIO_ANALYTICS_ENABLED": "False",
        **(env or {}),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + wait
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log.read_text()}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py was not up within {wait:.0f} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def require_loopback(url: str) -> str:
    """``url`` with a trailing slash; SystemExit unless its host is a loopback address."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--url must point at this machine (127.0.0.1, localhost), not {host}")
    return url.rstrip("/") + "/"


def timed_upscale(url: str, image: str, timeout: float) -> tuple[str, float]:
    """One upscale: ("ok" | "refused" | "error", seconds from submission to answer)."""
    started = time.perf_counter()
    try:
        event, answer = call(url, "upscale", [{"path": image}, *UPSCALE_ARGS], timeout=timeout)
    except httpx.HTTPStatusError as err:
        outcome = "refused" if err.response.status_code == 503 else "error"
        return outcome, time.perf_counter() - started
    except (httpx.HTTPError, RuntimeError):
        return "error", time.perf_counter() - started
    if event == "complete":
        return "ok", time.perf_counter() - started
    return ("refused" if "queue is full" in str(answer).lower() else "error"), (
        time.perf_counter() - started
    )


def percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def run(url: str, clients: int, requests: int, trainers: int, timeout: float) -> dict:
    """Submit the training requests, run the upscaling clients, stop the training runs."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "load.png"
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((128, 128), Image.BICUBIC).save(path)
        image = upload(url, path)
    sessions = [f"load-trainer-{n}" for n in range(trainers)]
    training = {"admitted": 0, "refused": 0, "error": 0}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    submitted = [(s, submit(url, "train_live", TRAIN_REQUEST, s)) for s in sessions]
    try:
        for _, event_id in submitted:
            event, answer = next(events(url, "train_live", event_id, timeout))
            busy = event == "error" and "busy training" in str(answer)
            outcome = "admitted" if event == "generating" else "refused" if busy else "error"
            training[outcome] += 1
        with ThreadPoolExecutor(clients) as pool:
            results = list(
                pool.map(lambda _: timed_upscale(url, image, timeout), range(clients * requests))
            )
    finally:
        for session in sessions:
            call(url, "stop_live", [], session, timeout)
    latencies = [seconds for outcome, seconds in results if outcome == "ok"]
    return {
        "machine": machine_description(),
        "load average before": load,
        "seconds": time.perf_counter() - started,
        "upscales": len(results),
        "ok": len(latencies),
        "refused": sum(outcome == "refused" for outcome, _ in results),
        "errors": sum(outcome == "error" for outcome, _ in results),
        "p50": statistics.median(latencies) if latencies else None,
        "p95": percentile(latencies, 0.95) if latencies else None,
        "max": max(latencies, default=None),
        "training": training,
    }


def report(result: dict, clients: int, requests: int, trainers: int) -> str:
    """The figures as printed."""
    seconds = ", ".join(
        f"{name} {result[name]:.2f} s" for name in ("p50", "p95", "max") if result[name]
    )
    training = result["training"]
    return "\n".join(
        [
            f"machine: {result['machine']} (load average {result['load average before']:.1f})",
            f"{trainers} training requests (300 steps each, one session each): "
            f"{training['admitted']} admitted, {training['refused']} refused at once, "
            f"{training['error']} errors",
            f"{clients} clients x {requests} upscales (128x128 px, x2, edsr-tiny ISS-P 0.9): "
            f"{result['ok']} ok, {result['refused']} refused, {result['errors']} errors "
            f"in {result['seconds']:.0f} s",
            f"upscale latency, submission to answer: {seconds or 'none succeeded'}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running app on this machine (default: start one)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10, help="upscales per client")
    parser.add_argument("--trainers", type=int, default=8, help="training requests")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    args = parser.parse_args()
    if min(args.clients, args.requests) < 1 or args.trainers < 0:
        parser.error("--clients and --requests must be at least 1, --trainers at least 0")
    figures = (args.clients, args.requests, args.trainers)
    if args.url:
        print(report(run(require_loopback(args.url), *figures, args.timeout), *figures))
        return
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "app.log"
        with app_process(ROOT / "checkpoints", log) as (url, _):
            print(report(run(url, *figures, args.timeout), *figures))


if __name__ == "__main__":
    main()
