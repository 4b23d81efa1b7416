"""The build of the checkpoint zoo: one protocol per (arch, scale), trained, scored, checked.

``python -m issp zoo build --data DIR --test DIR`` trains every missing checkpoint (and
resumes a half-trained one from ``runs/zoo/``), evaluates it on Set5/Set14 and records it
in the manifest (:mod:`issp.catalogue`). ``python -m issp zoo eval --data DIR`` scores
every checkpoint again, and :mod:`issp.report` turns the scores into the results table;
``zoo verify`` checks every file against its record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from torch import nn

from issp import catalogue
from issp.catalogue import FLOPS_INPUT, TEST_SETS, Record, Score, ZooEntry, score_key
from issp.checkpoint import checkpoint_info, load_checkpoint, sha256
from issp.evaluate import evaluate_arrays, evaluate_folder, validation_crops
from issp.machine import machine_description
from issp.methods import COMPARED
from issp.models import model_summary
from issp.train import TrainConfig, telemetry_path, train, training_images

WORK_DIR = catalogue.ROOT / "runs" / "zoo"
SWEEP = catalogue.ROOT / "analysis" / "alpha_sweep.md"
RATIOS = (0.5, 0.75, 0.9, 0.95, 0.99)

# One protocol per (arch, scale): every method gets the same seed, data order, steps,
# Kp, optimizer and schedule (TrainConfig's defaults, the ``cosine`` protocol, whose alpha
# the validation sweep in analysis/alpha_sweep.md chose); only the pruning rule differs.
PROTOCOLS: dict[tuple[str, int], dict] = {
    ("edsr-tiny", 2): {"steps": 3000, "prune_steps": 1800, "batch_size": 16, "patch": 48},
    ("edsr-tiny", 4): {"steps": 3000, "prune_steps": 1800, "batch_size": 16, "patch": 24},
    # SwinIR costs about 2.5x EDSR per pixel on CPU: fewer steps on smaller patches keep the
    # whole zoo within about 8 CPU-hours on a 2-core machine.
    ("swinir-tiny", 2): {"steps": 2000, "prune_steps": 1200, "batch_size": 16, "patch": 32},
}
PLAN_RATIOS = {
    ("edsr-tiny", 2): RATIOS,
    ("edsr-tiny", 4): RATIOS,
    ("swinir-tiny", 2): (0.9, 0.99),
}


def entry_config(entry: ZooEntry, data: str | None, device: str) -> TrainConfig:
    """How ``entry`` is trained: its (arch, scale)'s protocol, seed 0."""
    return TrainConfig(
        arch=entry.arch,
        scale=entry.scale,
        method=entry.method,
        ratio=entry.ratio,
        data=data,
        device=device,
        seed=0,
        **PROTOCOLS[(entry.arch, entry.scale)],
    )


def zoo_plan() -> list[ZooEntry]:
    """All checkpoints, in build order: the most useful (x2, mid ratios) first."""
    plan = []
    for arch, scale in PROTOCOLS:
        plan.append(ZooEntry(arch, scale, "dense", 0.0))
        ratios = sorted(PLAN_RATIOS[(arch, scale)], key=lambda r: (abs(r - 0.9), r))
        for ratio in ratios:
            plan += [ZooEntry(arch, scale, method, ratio) for method in COMPARED]
    return plan


def evaluate_checkpoint(model: nn.Module | None, test_dir: Path, scale: int) -> dict[str, Score]:
    """Mean PSNR/SSIM on each test set present under ``test_dir``, by test-set key."""
    scores = {}
    for name in TEST_SETS:
        if (test_dir / name).is_dir():
            result = evaluate_folder(model, test_dir / name, scale)
            scores[score_key(name)] = Score(round(result["psnr"], 4), round(result["ssim"], 5))
    return scores


def _record(entry: ZooEntry, path: Path, model: nn.Module, meta: dict, seconds: float) -> Record:
    summary = model_summary(model, FLOPS_INPUT)
    return Record(
        file=entry.file,
        arch=entry.arch,
        scale=entry.scale,
        method=entry.method,
        ratio=entry.ratio,
        alpha=float(meta["alpha"]) if entry.method == "issp" else None,
        steps=int(meta["steps"]),
        prune_steps=int(meta["prune_steps"]),
        seed=int(meta["seed"]),
        sha256=sha256(path),
        params=summary["params"],
        nonzeros=summary["nonzeros"],
        flops_input=FLOPS_INPUT,
        flops_dense=summary["flops_dense"],
        flops_sparse=summary["flops_sparse"],
        device=meta.get("device", "unknown"),
        data=meta.get("data", ""),
        # The checkpoint counts every session of a resumed run; older ones only this one.
        train_seconds=float(meta.get("train_seconds", seconds)),
    )


def build(
    data: str | None,
    test: Path | None,
    device: str = "cpu",
    only: str | None = None,
    log=print,
) -> None:
    """Train, evaluate and record every missing zoo checkpoint; resumable at any point."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    catalogue.TELEMETRY_DIR.mkdir(parents=True, exist_ok=True)
    for entry in zoo_plan():
        if only and only not in entry.name:
            continue
        if _is_built(entry):
            continue
        work = WORK_DIR / entry.file
        with _claim(work) as claimed:
            if not claimed:
                log(f"[{time.strftime('%H:%M:%S')}] skipping {entry.name}: another build has it")
            elif not _is_built(entry):  # another build may have finished it meanwhile
                _train_entry(entry, work, data, test, device, log)


def _is_built(entry: ZooEntry) -> bool:
    final = catalogue.ZOO_DIR / entry.file
    done = [r for r in catalogue.load_manifest().checkpoints if r.file == entry.file]
    return bool(done) and final.exists() and sha256(final) == done[0].sha256


@contextlib.contextmanager
def _claim(work: Path):
    """Hold a lock on one zoo entry, so that builds running side by side split the plan."""
    try:
        with FileLock(work.with_suffix(".lock"), timeout=0):
            yield True
    except Timeout:
        yield False


def _train_entry(
    entry: ZooEntry, work: Path, data: str | None, test: Path | None, device: str, log
) -> None:
    """Train (or resume) one entry, then move it into the zoo and record it."""
    final = catalogue.ZOO_DIR / entry.file
    log(f"[{time.strftime('%H:%M:%S')}] training {entry.name}")
    started = time.time()
    train(entry_config(entry, data, device), work, resume=True)
    model, meta = load_checkpoint(work)
    work.replace(final)
    telemetry_path(work).replace(catalogue.TELEMETRY_DIR / f"{entry.name}.npz")
    record = _record(entry, final, model, meta, round(time.time() - started, 1))
    if test is not None:
        record = dataclasses.replace(record, scores=evaluate_checkpoint(model, test, entry.scale))
    with catalogue.updating_manifest() as manifest:
        manifest.checkpoints = [r for r in manifest.checkpoints if r.file != entry.file]
        manifest.checkpoints.append(record)
        manifest.checkpoints.sort(key=lambda r: (r.arch, r.scale, r.method, r.ratio))
        manifest.protocols = {f"{a} x{s}": p for (a, s), p in PROTOCOLS.items()}
    Path(f"{work}.state.pt").unlink(missing_ok=True)
    set5 = record.scores.get(score_key("Set5"))
    log(
        f"[{time.strftime('%H:%M:%S')}] done {entry.name} in {record.train_seconds:.0f} s"
        + (f", Set5 {set5.psnr:.2f} dB" if set5 else "")
    )


def sweep_alpha(
    data: str | None,
    alphas: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999),
    ratio: float = 0.95,
    steps: int = 1000,
    device: str = "cpu",
    log=print,
) -> str:
    """Short edsr-tiny x2 runs of ISS-P at several alphas (and IHT), scored on a validation
    split carved out of the training images; returns and stores the table as Markdown."""
    base = entry_config(ZooEntry("edsr-tiny", 2, "issp", ratio), data, device)
    runs = [("iht", None)] + [("issp", alpha) for alpha in alphas]
    rows = []
    for method, alpha in runs:
        config = dataclasses.replace(
            base,
            method=method,
            alpha=alpha if alpha is not None else TrainConfig.alpha,
            steps=steps,
            prune_steps=int(0.6 * steps),
            val_every=steps,
        )
        label = "IHT" if alpha is None else f"ISS-P alpha={alpha:g}"
        log(f"[{time.strftime('%H:%M:%S')}] sweep {label}")
        out = WORK_DIR / "sweep" / f"{method}_{alpha}.safetensors"
        history = train(config, out, resume=True)
        flips = float(np.load(telemetry_path(out))["flips"].sum())
        rows.append((label, history["val_psnr"][-1], flips))
    lines = [
        f"# Alpha sweep\n\nMade by `python -m issp zoo sweep --data {data}` on "
        f"{machine_description()}, {time.strftime('%Y-%m-%d')}: edsr-tiny x2, ratio {ratio}, "
        f"{steps} steps, Kp = {int(0.6 * steps)}, otherwise the zoo protocol. PSNR (Y) on the "
        "validation split carved out of the training images (never Set5/Set14).\n",
        "| run | validation PSNR (dB) | mask flips (all layers, all steps) |",
        "|---|---|---|",
    ]
    _, val_paths, _ = training_images(base)
    bicubic = evaluate_arrays(None, validation_crops(val_paths, base.scale), base.scale)["psnr"]
    lines.append(f"| bicubic (reference) | {bicubic:.3f} | |")
    lines += [f"| {label} | {psnr:.3f} | {flips:,.0f} |" for label, psnr, flips in rows]
    table = "\n".join(lines) + "\n"
    SWEEP.write_text(table)
    return table


@dataclass(frozen=True)
class ZooScores:
    """Every checkpoint scored again, and bicubic's scores per (arch, scale)."""

    records: list[Record]
    bicubic: dict[tuple[str, int], dict[str, Score]]


def evaluate_zoo(test: Path) -> ZooScores:
    """Re-evaluate every manifest checkpoint (and bicubic) and refresh the manifest."""
    manifest = catalogue.load_manifest()
    bicubic, records = {}, []
    for arch, scale in sorted({(r.arch, r.scale) for r in manifest.checkpoints}):
        bicubic[(arch, scale)] = evaluate_checkpoint(None, test, scale)
        for record in manifest.checkpoints:
            if (record.arch, record.scale) == (arch, scale):
                model, _ = catalogue.load_zoo_model(
                    arch, scale, record.method, record.ratio, manifest, catalogue.ZOO_DIR
                )
                scores = record.scores | evaluate_checkpoint(model, test, scale)
                records.append(dataclasses.replace(record, scores=scores))
    scored = {(r.file, r.sha256): r.scores for r in records}
    with catalogue.updating_manifest() as current:
        current.checkpoints = [
            dataclasses.replace(r, scores=scored.get((r.file, r.sha256), r.scores))
            for r in current.checkpoints
        ]
    return ZooScores(records, bicubic)


@dataclass(frozen=True)
class Verification:
    """What ``verify_zoo`` found for one manifest record; None where it did not look."""

    file: str
    exists: bool
    ok: bool = False
    sha256_ok: bool | None = None
    sparsity_error: float | None = None  # worst layer's |sparsity - ratio|
    set5_psnr: float | None = None  # measured now
    set5_manifest: float | None = None  # recorded


def verify_zoo(test: Path | None = None, tolerance_db: float = 0.02) -> list[Verification]:
    """Check every manifest entry against its file, and (with ``test``) its Set5 PSNR.

    Per entry: the file exists, its sha256 matches, every pruned layer's sparsity is within
    0.5% of the ratio, and the Set5 PSNR measured now is within ``tolerance_db`` of the
    manifest's.
    """
    return [_verify(record, test, tolerance_db) for record in catalogue.load_manifest().checkpoints]


def _verify(record: Record, test: Path | None, tolerance_db: float) -> Verification:
    path = catalogue.ZOO_DIR / record.file
    if not path.is_file():
        return Verification(record.file, exists=False)
    if sha256(path) != record.sha256:
        # Not the file the manifest describes: nothing more to check.
        return Verification(record.file, exists=True, sha256_ok=False)
    layers = checkpoint_info(path)["layers"]
    error = max(
        (abs(1 - layer["nonzeros"] / layer["numel"] - record.ratio) for layer in layers),
        default=0.0,
    )
    found = Verification(record.file, True, error <= 0.005, True, error)
    if test is None or not (test / "Set5").is_dir():
        return found
    model, _ = load_checkpoint(path)
    measured = evaluate_folder(model, test / "Set5", record.scale)["psnr"]
    recorded = record.scores.get(score_key("Set5"))
    close = recorded is not None and abs(measured - recorded.psnr) <= tolerance_db
    return dataclasses.replace(
        found,
        ok=found.ok and close,
        set5_psnr=measured,
        set5_manifest=None if recorded is None else recorded.psnr,
    )
