"""Shared fixtures: a tiny checkpoint zoo made without training, and helpers for images."""

import contextlib
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.load import app_process
from issp.checkpoint import save_checkpoint, sha256
from issp.models import build_model, model_summary
from issp.pruning import Pruner, prunable_weights, smallest_mask
from issp.train import save_telemetry
from issp.zoo import ROOT, ZOO_DIR, ZooEntry, load_manifest

FAKE_RATIOS = (0.5, 0.9)


def make_fake_zoo(folder: Path, scales: tuple[int, ...] = (2, 4)) -> Path:
    """Write untrained edsr-tiny checkpoints (dense, ISS-P and IHT at FAKE_RATIOS) and a manifest.

    The pruned ones get their smallest weights zeroed, so sizes and non-zero counts are
    real; the scores are made up (ISS-P a little above IHT, as the paper reports).
    """
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for scale in scales:
        entries = [("dense", 0.0)] + [(m, r) for r in FAKE_RATIOS for m in ("issp", "iht")]
        for method, ratio in entries:
            torch.manual_seed(0)
            model = build_model("edsr-tiny", scale).eval()
            weights = prunable_weights(model)
            with torch.no_grad():
                for weight in weights.values():
                    weight.masked_fill_(smallest_mask(weight, math.ceil(ratio * weight.numel())), 0)
            name = (
                f"edsr-tiny_x{scale}_dense"
                if method == "dense"
                else f"edsr-tiny_x{scale}_{method}_r{ratio:g}"
            )
            path = folder / f"{name}.safetensors"
            meta = {"preset": "edsr-tiny", "scale": scale, "method": method, "ratio": ratio}
            save_checkpoint(path, model, meta, [] if method == "dense" else list(weights))
            # FLOPs of a conv net grow with the pixel count: count on 32x32, report 256x256.
            summary = model_summary(model, (32, 32))
            psnr = 30.0 - 3 * ratio**2 - (0.5 * ratio if method == "iht" else 0.0)
            records.append(
                {
                    "file": path.name,
                    "arch": "edsr-tiny",
                    "scale": scale,
                    "method": method,
                    "ratio": ratio,
                    "sha256": sha256(path),
                    "params": summary["params"],
                    "nonzeros": summary["nonzeros"],
                    "flops_input": [256, 256],
                    "flops_dense": summary["flops_dense"] * 64,
                    "flops_sparse": summary["flops_sparse"] * 64,
                    "device": "cpu (fake zoo for tests)",
                    "steps": 0,
                    "set5": {"psnr": psnr, "ssim": 0.9 - ratio / 10},
                }
            )
    manifest = {"checkpoints": records, "alpha": 0.99}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


@pytest.fixture(scope="session")
def fake_zoo(tmp_path_factory) -> Path:
    """A fake zoo shared by the whole session (it takes a few seconds to write)."""
    return make_fake_zoo(tmp_path_factory.mktemp("zoo"))


def photo(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A smooth random image of the given size and mode."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(height // 4, 1), max(width // 4, 1), 3), dtype=np.uint8)
    rgb = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize((width, height))
        rgb.putalpha(alpha)
        return rgb
    return rgb.convert(mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def bad_file(folder: Path, kind: str) -> str:
    """Write one kind of bad upload (named by ``kind``) into ``folder``; return its path."""
    if kind == "text.png":
        (folder / kind).write_text("not an image")
    elif kind == "truncated.png":
        photo(64, 64).save(folder / "whole.png")
        data = (folder / "whole.png").read_bytes()
        (folder / kind).write_bytes(data[: len(data) // 2])
    elif kind in ("bomb.png", "big.png"):
        side = 30000 if kind == "bomb.png" else 3000
        (folder / kind).write_bytes(png_header_only(side, side))
    elif kind == "animated.gif":
        frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
        frames[0].save(folder / kind, save_all=True, append_images=frames[1:])
    return str(folder / kind)


def free_port() -> int:
    """A TCP port nobody is listening on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def zoo_for_app(fake: Path) -> Path:
    """The real zoo if it already has edsr-tiny x2 checkpoints, else the fake one."""
    manifest = load_manifest(ZOO_DIR / "manifest.json")
    has_x2 = any(r["arch"] == "edsr-tiny" and r["scale"] == 2 for r in manifest["checkpoints"])
    return ZOO_DIR if has_x2 else fake


@pytest.fixture(scope="session")
def app_server(fake_zoo, tmp_path_factory):
    """``python app.py`` on a free port, shared by the end-to-end and browser tests.

    Yields ``(url, zoo_dir)``. Fails with the server's output if it is not up in 60 s.
    """
    port = free_port()
    zoo_dir = zoo_for_app(fake_zoo)
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "ISSP_ZOO_DIR": str(zoo_dir),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py was not up within 60 s:\n{log.read_text()}")
            time.sleep(0.25)
        yield url, zoo_dir
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_stored_run(folder: Path, method: str, ratio: float, steps: int = 5) -> None:
    """Store a few steps of real pruner telemetry as the zoo would (for the stored tabs)."""
    torch.manual_seed(0)
    model = build_model("edsr-tiny", 2)
    pruner = Pruner(model, method, ratio, prune_steps=3, alpha=0.99)
    history = {"loss": [], "val_steps": [steps], "val_psnr": [30.0]}
    for _ in range(steps):
        model(torch.rand(1, 3, 8, 8)).abs().mean().backward()
        pruner.step()
        history["loss"].append(0.1)
    save_telemetry(folder / f"{ZooEntry('edsr-tiny', 2, method, ratio).name}.npz", pruner, history)


@contextlib.contextmanager
def started_app(zoo_dir: Path, log: Path, **env: str):
    """``python app.py`` on a free port with ``zoo_dir`` and the extra ``env``; yields its
    URL and process, and stops it on leaving (``benchmarks.load.app_process``).

    For tests that need a server of their own (a broken zoo, a killed server).
    """
    with app_process(zoo_dir, log, env) as started:
        yield started
