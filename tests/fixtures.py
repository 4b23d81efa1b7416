"""Helpers the tests share: a tiny checkpoint zoo made without training, images good and
bad, stored telemetry. Pytest's fixtures are in conftest.py."""

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from analysis.lockstep import LockstepConfig
from issp.catalogue import (
    ZOO_DIR,
    Manifest,
    Record,
    Score,
    ZooEntry,
    load_manifest,
    protocol_key,
)
from issp.checkpoint import save_checkpoint, sha256
from issp.models import build_model, model_summary
from issp.prunable import prunable_weights
from issp.pruning import Pruner
from issp.run_files import save_telemetry
from issp.selection import smallest_mask
from webapp.live import live_config
from webapp.model_zoo import ModelZoo
from webapp.upscaling import DEFAULT_FORMAT, Limits, UpscaleResult, upscale

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
            path = folder / ZooEntry("edsr-tiny", scale, method, ratio).file
            meta = {"preset": "edsr-tiny", "scale": scale, "method": method, "ratio": ratio}
            save_checkpoint(path, model, meta, [] if method == "dense" else list(weights))
            # FLOPs of a conv net grow with the pixel count: count on 32x32, report 256x256.
            summary = model_summary(model, (32, 32))
            psnr = 30.0 - 3 * ratio**2 - (0.5 * ratio if method == "iht" else 0.0)
            records.append(
                Record(
                    file=path.name,
                    arch="edsr-tiny",
                    scale=scale,
                    method=method,
                    ratio=ratio,
                    sha256=sha256(path),
                    params=summary["params"],
                    nonzeros=summary["nonzeros"],
                    flops_input=(256, 256),
                    flops_dense=summary["flops_dense"] * 64,
                    flops_sparse=summary["flops_sparse"] * 64,
                    device="cpu (fake zoo for tests)",
                    steps=0,
                    scores={"set5": Score(psnr, 0.9 - ratio / 10)},
                )
            )
    manifest = Manifest(records, alpha=0.99)
    (folder / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2))
    return folder


def zoo_for_app(fake: Path) -> Path:
    """The real zoo if it already has edsr-tiny x2 checkpoints, else the fake one."""
    records = load_manifest(ZOO_DIR / "manifest.json").checkpoints
    has_x2 = any((r.arch, r.scale) == ("edsr-tiny", 2) for r in records)
    return ZOO_DIR if has_x2 else fake


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


def stored_manifest(ratio: float, prune_steps: int, lr: float | None) -> Manifest:
    """A zoo manifest saying how the stored edsr-tiny x2 ISS-P and IHT runs of ``ratio``
    were trained (two-stage; ``lr`` None: the first zoo's, which recorded no protocol)."""
    protocol = None if lr is None else "two-stage"
    records = [
        Record(
            file=ZooEntry("edsr-tiny", 2, method, ratio).file,
            arch="edsr-tiny",
            scale=2,
            method=method,
            ratio=ratio,
            alpha=0.5 if method == "issp" else None,
            protocol=protocol,
            prune_steps=prune_steps,
            sha256="0" * 64,
            params=1,
            nonzeros=1,
            flops_dense=1,
            flops_sparse=1,
        )
        for method in ("issp", "iht")
    ]
    shared = {"protocol": protocol, "lr": lr, "prune_steps": prune_steps, "alpha": 0.5}
    return Manifest(records, {} if lr is None else {protocol_key("edsr-tiny", 2): shared})


def tiny_lockstep(photos: Path, **overrides) -> LockstepConfig:
    """A lockstep comparison small enough for a test: 12 steps of batch 2, 8 px patches."""
    settings = {
        "steps": 12,
        "batch_size": 2,
        "patch": 8,
        "val_every": 6,
        "val_crop": 32,
        "data": str(photos),
    }
    return LockstepConfig(**(settings | overrides))


def live_request(base: LockstepConfig, steps: int = 12, **overrides) -> LockstepConfig:
    """The checked config of a live-tab request on top of ``base``, as the app makes it."""
    request = {
        "arch": "edsr-tiny",
        "scale": 2,
        "ratio": 0.9,
        "alpha": 0.99,
        "steps": steps,
        "prune_steps": None,
        "seed": 0,
        "extra": (),
    }
    return live_config(**(request | overrides), base=base)


def run_upscale(
    zoo: ModelZoo,
    path,
    tmp_path: Path,
    scale=2,
    ratio=0.9,
    method="ISS-P",
    arch="edsr-tiny",
    output_format=DEFAULT_FORMAT,
    progress=None,
) -> UpscaleResult:
    """``webapp.upscaling.upscale`` with the default limits into ``tmp_path/out``."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return upscale(zoo, path, scale, ratio, method, arch, Limits(), out, output_format, progress)


STUDY_COMMAND = "python -m issp study run --seeds 0,1,2"
# Set5 PSNR per method and seed, by (scale, ratio); ratio 0 is the dense model. At x2,
# ISS-P minus IHT is about +0.3 dB at every seed at 0.9, mixed at 0.95 and about -0.3 dB
# at 0.99; at x4 only seed 0 has both methods, and seed 1 has ISS-P alone.
STUDY_SET5 = {
    (2, 0.0): {"dense": [36.0, 36.2, 35.9]},
    (2, 0.9): {"iht": [35.0, 35.1, 34.9], "issp": [35.30, 35.41, 35.19]},
    (2, 0.95): {"iht": [34.0, 34.2, 34.1], "issp": [34.5, 33.8, 34.4]},
    (2, 0.99): {"iht": [32.0, 32.1, 31.9], "issp": [31.70, 31.79, 31.61]},
    (4, 0.0): {"dense": [30.0, 30.1]},
    (4, 0.9): {"iht": [29.0], "issp": [29.2, 29.3]},
}


def study_runs() -> list[dict]:
    """Finished study runs as ``issp study`` stores them, one per method, ratio and seed."""
    runs = []
    for (scale, ratio), methods in STUDY_SET5.items():
        for method, scores in methods.items():
            for seed, psnr in enumerate(scores):
                config = {"scale": scale, "method": method, "ratio": ratio, "seed": seed}
                runs.append(
                    {
                        "name": f"x{scale}_{method}_r{ratio}_s{seed}",
                        "config": config | {"protocol": "two-stage"},
                        "set5": {"psnr": psnr, "ssim": 0.9},
                        "val_psnr": psnr - 1.0,
                        "train_seconds": 1.0,
                        "device": "cpu",
                    }
                )
    return runs
