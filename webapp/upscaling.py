"""Upscale an upload with a zoo checkpoint, or score the zoo's models on it.

Both run inside the server's request queue under :class:`Limits`: the pixel limits are
checked from the image header before any pixel is decoded, and large images run in tiles.
Both tell an optional ``progress`` (:data:`issp.upscale.Progress`) how far they are.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import torch
from PIL import Image
from torch import nn

from issp import IsspError
from issp.catalogue import FLOPS_INPUT, Record
from issp.data import load_image, make_lr, modcrop, to_array
from issp.evaluate import Pair, evaluate_arrays
from issp.machine import available_cpus
from issp.methods import COMPARED, colour, label
from issp.upscale import (
    DEFAULT_FORMAT,
    OUTPUT_FORMATS,
    InferenceModel,
    Progress,
    fast_tile,
    upscale_image,
)
from webapp.checks import check_choice, check_ratio, check_scale
from webapp.model_choice import choose_model, nearest, resolve_arch, zoo_archs
from webapp.model_zoo import ModelZoo

EVALUATE_COLUMNS = ("model", "ratio", "checkpoint", "psnr", "ssim")


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server.

    ``max_upload_mb`` is enforced by Gradio before a file reaches us; the pixel limits
    are checked from the image header before any pixel is decoded. ``tile`` bounds the
    memory of one forward pass (LR pixels per side). Outputs larger than
    ``preview_side`` squared are compared on a centre crop of that size, because a
    browser slider over a 30-megapixel pair is unusable; the download is always full size.

    One megapixel keeps the slowest request (x4 with edsr-tiny) under a minute on one
    busy CPU core; two megapixels took about 90 s.
    """

    max_upload_mb: int = 10
    max_upscale_pixels: int = 1_000_000
    max_evaluate_pixels: int = 500_000
    tile: int = 192
    preview_side: int = 1024

    def describe(self) -> str:
        """One line for the UI saying what the limits are."""
        return (
            f"Limits: uploads up to {self.max_upload_mb} MB; upscaling up to "
            f"{self.max_upscale_pixels / 1e6:g} megapixels; evaluation up to "
            f"{self.max_evaluate_pixels / 1e6:g} megapixels. Large images run in tiles of "
            f"{fast_tile(2)} px (x2) or {fast_tile(4)} px (x4) to upscale, {self.tile} px to "
            "evaluate."
        )


@dataclass(frozen=True)
class UpscaleResult:
    """Files and summary of one upscale request."""

    download: Path  # the full-size result, in the format asked for
    bicubic_preview: Path
    model_preview: Path
    summary: str
    size: tuple[int, int]


@dataclass(frozen=True)
class EvaluateResult:
    """PSNR/SSIM rows (bicubic, dense, ISS-P, IHT) and a PSNR-vs-ratio figure."""

    rows: list[dict]
    figure: go.Figure
    note: str


def configure_threads(concurrency: int) -> int:
    """Split the usable CPU cores between the ``concurrency`` requests the queue runs at
    once.

    Without this every request would start one thread per core and they would fight over
    the cores. Returns the threads per request.
    """
    threads = max(1, available_cpus() // max(1, concurrency))
    torch.set_num_threads(threads)
    return threads


def open_image(path: str | Path | None, max_pixels: int) -> Image.Image:
    """Decode an upload with the library's rules, naming it by file name only in errors."""
    if path is None or str(path).strip() == "":
        raise IsspError("no image: upload one first")
    try:
        return load_image(path, max_pixels=max_pixels)
    except IsspError as err:
        # The server's temp path means nothing to the user and should not leak to them.
        raise IsspError(str(err).replace(str(path), Path(path).name)) from None


def centre_crop(img: Image.Image, side: int) -> Image.Image:
    """The centre ``side`` x ``side`` px of ``img`` (all of a side shorter than that)."""
    width, height = img.size
    left, top = max((width - side) // 2, 0), max((height - side) // 2, 0)
    return img.crop((left, top, min(left + side, width), min(top + side, height)))


def upscale(
    zoo: ModelZoo,
    path: str | Path | None,
    scale: int,
    ratio: float,
    method: str,
    arch: str | None,
    limits: Limits,
    out_dir: str | Path,
    output_format: str = DEFAULT_FORMAT,
    progress: Progress | None = None,
) -> UpscaleResult:
    """Upscale one image with the zoo checkpoint nearest the request.

    Writes the full-size result in ``output_format`` (a key of ``OUTPUT_FORMATS``) and the
    two comparison PNGs (bicubic and model, the same centre crop when the output is large)
    into ``out_dir``. ``progress`` is told before each tile.
    """
    fmt = OUTPUT_FORMATS[check_choice(output_format, "output format", OUTPUT_FORMATS)]
    manifest = zoo.manifest()
    if not zoo_archs(manifest, check_scale(scale)) and zoo.problems():
        raise IsspError(f"no x{scale} model can be used now. {zoo.status()}")
    choice = choose_model(manifest, arch, scale, method, ratio)
    img = open_image(path, limits.max_upscale_pixels)
    fmt.check_fits(img.width * choice.scale, img.height * choice.scale)
    model, record = zoo.model(choice.arch, choice.scale, choice.method, choice.ratio)
    started = time.perf_counter()
    tile = fast_tile(choice.scale)
    sr = upscale_image(model, img, choice.scale, tile=tile, progress=progress)
    latency = time.perf_counter() - started
    bicubic = upscale_image(None, img, choice.scale)

    out_dir = Path(out_dir)
    stem = Path(str(path)).stem[:60] or "image"
    download = out_dir / f"{stem}_x{choice.scale}_{Path(record.file).stem}{fmt.suffix}"
    fmt.save(sr, download)
    cropped = sr.width * sr.height > limits.preview_side**2
    previews = []
    for name, image in (("bicubic", bicubic), ("model", sr)):
        preview = centre_crop(image, limits.preview_side) if cropped else image
        previews.append(out_dir / f"compare_{name}.png")
        # Fast compression: previews are shown once and thrown away.
        preview.save(previews[-1], compress_level=1)

    width, height = img.size
    tiles = math.ceil(height / tile) * math.ceil(width / tile)
    pixels = width * height / (FLOPS_INPUT[0] * FLOPS_INPUT[1])
    summary = (
        f"{choice.note} Checkpoint `{record.file}`; "
        f"non-zero weights {record.nonzeros:,} of {record.params:,} "
        f"({record.nonzeros / record.params:.1%}); "
        f"sparse FLOPs {record.flops_sparse * pixels / 1e9:.2f} G "
        f"(dense {record.flops_dense * pixels / 1e9:.2f} G) for this {width}x{height} input; "
        f"latency {latency:.2f} s on {torch.get_num_threads()} CPU thread(s), "
        f"{model.describe() if isinstance(model, InferenceModel) else 'float32'}; "
        f"{tiles} tile{'s' if tiles > 1 else ''} of {tile} px; "
        f"output {sr.width}x{sr.height}, {fmt.label}."
    )
    if not fmt.alpha and "A" in sr.getbands():
        summary += f" {fmt.pillow} has no alpha channel: the download is opaque."
    if cropped:
        summary += f" The comparison shows the centre {limits.preview_side} px crop."
    return UpscaleResult(download, previews[0], previews[1], summary, sr.size)


def evaluate(
    zoo: ModelZoo,
    path: str | Path | None,
    scale: int,
    ratio: float,
    arch: str | None,
    limits: Limits,
    progress: Progress | None = None,
) -> EvaluateResult:
    """Score bicubic, dense, ISS-P and IHT on an upload used as ground truth.

    The upload is the HR image; its LR is made with the library's degradation
    (:func:`issp.data.make_lr`), and every model is scored with the benchmark protocol
    (:func:`issp.evaluate.evaluate_arrays`). Each pruned method is scored at its ratio
    nearest to ``ratio`` and, for the figure, at every ratio it has. A checkpoint that
    cannot be used gets a row that says why, with no scores; a zoo with nothing at
    ``scale`` still gets bicubic scored. ``progress`` is told before each model.
    """
    scale = check_scale(scale)
    ratio = check_ratio(ratio)
    manifest = zoo.manifest()
    arch = resolve_arch(manifest, arch, scale) if zoo_archs(manifest, scale) else None
    img = open_image(path, limits.max_evaluate_pixels)
    hr = modcrop(to_array(img), scale)
    # Both metrics drop `scale` px per border and SSIM needs an 11x11 window inside.
    smallest = 2 * scale + 11
    if min(hr.shape[:2]) < smallest:
        raise IsspError(
            f"evaluation needs an image of at least {smallest}x{smallest} px for x{scale}, "
            f"got {img.width}x{img.height}"
        )
    offered = {
        method: sorted(r.ratio for r in manifest.checkpoints if _matches(r, arch, scale, method))
        for method in ("dense", *COMPARED)
    }
    steps = _Steps(progress, 1 + sum(map(len, offered.values())))
    pair = (Path(str(path)).name, make_lr(hr, scale), hr)
    scorer = _Scorer(zoo, pair, scale, limits.tile, steps)
    rows = [{"model": "bicubic", "ratio": None, "checkpoint": "", **scorer.score(None, "bicubic")}]
    sweep: dict[str, list[tuple[float, float]]] = {}
    missing = [method for method, ratios in offered.items() if not ratios]
    for method, ratios in offered.items():
        if ratios:
            rows += scorer.method_rows(arch, method, ratios, nearest(ratio, ratios), sweep)
    for problem in zoo.problems():
        record = problem.record
        if record is not None and record.scale == scale and arch in (None, record.arch):
            why = f"{problem.name} {problem.reason}"
            rows.append(_unusable(label(record.method), record.ratio, why))
    if arch is None:
        note = f"Only bicubic is scored: no x{scale} checkpoint can be used. {zoo.status()}"
    else:
        note = f"{arch} x{scale} on {img.width}x{img.height} px used as ground truth."
        pruned = [label(m) for m in missing if m in COMPARED]
        if pruned:
            note += f" No {' or '.join(pruned)} checkpoints of {arch} x{scale} yet."
    return EvaluateResult(rows, _sweep_figure(rows, sweep, arch, scale), note.strip())


def _matches(record: Record, arch: str | None, scale: int, method: str) -> bool:
    return (record.arch, record.scale, record.method) == (arch, scale, method)


def _unusable(name: str, ratio: float, why: str) -> dict:
    return {"model": name, "ratio": ratio, "checkpoint": why, "psnr": None, "ssim": None}


@dataclass
class _Steps:
    """Tells ``progress`` (if any) as each of ``total`` steps starts."""

    progress: Progress | None
    total: int
    done: int = 0

    def start(self, what: str) -> None:
        if self.progress is not None:
            self.progress(self.done / self.total, f"{what} ({self.done + 1} of {self.total})")
        self.done += 1


@dataclass(frozen=True)
class _Scorer:
    """Scores zoo models on one (name, LR, HR) pair, as ``evaluate`` shows them."""

    zoo: ModelZoo
    pair: Pair
    scale: int
    tile: int
    steps: _Steps

    def score(self, model: nn.Module | None, name: str) -> dict:
        self.steps.start(f"scoring {name}")
        result = evaluate_arrays(model, [self.pair], self.scale, tile=self.tile)
        return {"psnr": round(result["psnr"], 3), "ssim": round(result["ssim"], 4)}

    def method_rows(
        self,
        arch: str,
        method: str,
        ratios: list[float],
        chosen: float,
        sweep: dict[str, list[tuple[float, float]]],
    ) -> list[dict]:
        """The row of ``method`` at ``chosen``; every ratio's PSNR goes into ``sweep``."""
        rows = []
        for each in ratios if method != "dense" else [0.0]:
            try:
                model, record = self.zoo.model(arch, self.scale, method, each)
            except IsspError as err:
                if each == chosen:
                    rows.append(_unusable(label(method), each, str(err)))
                continue
            scores = self.score(model, f"{label(method)} {each:g}" if each else label(method))
            if method != "dense":
                sweep.setdefault(label(method), []).append((each, scores["psnr"]))
            if each == chosen:
                rows.append(
                    {"model": label(method), "ratio": each, "checkpoint": record.file, **scores}
                )
        return rows


def _sweep_figure(
    rows: list[dict], sweep: dict[str, list[tuple[float, float]]], arch: str | None, scale: int
) -> go.Figure:
    # Both methods prune the same dense start, so each line begins at the dense score.
    dense = [
        (0.0, row["psnr"]) for row in rows if row["model"] == "dense" and row["psnr"] is not None
    ]
    methods = {label(m): m for m in COMPARED}
    figure = go.Figure()
    for name, points in sweep.items():
        ratios, psnrs = zip(*dense, *points, strict=True)
        figure.add_trace(
            go.Scatter(
                x=ratios,
                y=psnrs,
                mode="lines+markers",
                name=name,
                line_color=colour(methods[name]),
            )
        )
    bicubic = rows[0]["psnr"]
    figure.add_hline(y=bicubic, line_dash="dot", annotation_text=f"bicubic {bicubic:.2f} dB")
    figure.update_layout(
        title=f"PSNR on this image, {arch or 'bicubic'} x{scale} (ratio 0 = dense)",
        xaxis_title="pruning ratio",
        yaxis_title="PSNR (dB, Y channel)",
        template="plotly_white",
    )
    return figure
