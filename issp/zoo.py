"""The build of the checkpoint zoo: one protocol per (arch, scale), trained, scored, checked.

``python -m issp zoo build --data DIR --test DIR`` trains every missing checkpoint (and
resumes a half-trained one), evaluates it on Set5/Set14 and records it in the manifest
(:mod:`issp.catalogue`). The edsr-tiny checkpoints are the paired-seed study's seed-0 runs
(:func:`issp.study.seed_run`), so one the study has finished is copied, not trained again.
``--zoo DIR`` builds into another folder, so a new zoo grows beside the one being served
and is swapped in when complete. ``python -m issp zoo eval --data DIR`` scores every
checkpoint again, and :mod:`issp.zoo_report` turns the scores into the results table;
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

from issp import IsspError, catalogue, study
from issp.catalogue import (
    FLOPS_INPUT,
    TEST_SETS,
    Record,
    Score,
    ZooEntry,
    protocol_key,
    score_key,
)
from issp.checkpoint import checkpoint_info, load_checkpoint, read_metadata, sha256
from issp.evaluate import evaluate_arrays, evaluate_folder, validation_crops
from issp.files import copy_file, write_text
from issp.machine import machine_description
from issp.methods import COMPARED
from issp.models import model_summary
from issp.run_files import state_path, telemetry_path
from issp.train import TrainConfig, train, training_images

WORK_DIR = catalogue.ROOT / "runs" / "zoo"  # the checkout's zoo's runs in progress
SWEEP = catalogue.ROOT / "analysis" / "alpha_sweep.md"
RATIOS = (0.5, 0.75, 0.9, 0.95, 0.99)
SEED = 0

# One protocol for every (arch, scale): every method gets the same seed, data order, steps,
# Kp, optimizer and schedule; only the pruning rule differs. edsr-tiny is trained as the
# study trains it; the rest has its own length and batches below.
PROTOCOL = study.PROTOCOL
PLAN_RATIOS = {
    ("edsr-tiny", 2): RATIOS,
    ("edsr-tiny", 4): RATIOS,
    ("swinir-tiny", 2): (0.9, 0.99),
}
# SwinIR costs about 2.5x EDSR per pixel on CPU: fewer steps on smaller patches keep it
# within a few CPU-hours on a 2-core machine.
OWN_SETTINGS = {("swinir-tiny", 2): {"steps": 2000, "batch_size": 16, "patch": 32}}


def entry_config(entry: ZooEntry, data: str | None, device: str) -> TrainConfig:
    """How ``entry`` is trained: the study's own run of it (edsr-tiny, seed 0), else the
    zoo's protocol with its (arch, scale)'s settings."""
    if entry.arch == study.ARCH:
        run = study.seed_run(entry.scale, entry.method, entry.ratio, data, seed=SEED)
        return dataclasses.replace(run.config, device=device)
    return TrainConfig.of_protocol(
        PROTOCOL,
        arch=entry.arch,
        scale=entry.scale,
        method=entry.method,
        ratio=entry.ratio,
        data=data,
        device=device,
        seed=SEED,
        **OWN_SETTINGS[(entry.arch, entry.scale)],
    )


def zoo_plan() -> list[ZooEntry]:
    """All checkpoints, in build order: the most useful (x2, mid ratios) first."""
    plan = []
    for (arch, scale), ratios in PLAN_RATIOS.items():
        plan.append(ZooEntry(arch, scale, "dense", 0.0))
        for ratio in sorted(ratios, key=lambda r: (abs(r - 0.9), r)):
            plan += [ZooEntry(arch, scale, method, ratio) for method in COMPARED]
    return plan


def protocol_settings(config: TrainConfig) -> dict:
    """What every method of ``config``'s (arch, scale) shares, by the names a checkpoint's
    metadata gives them (``issp.train.train``): the manifest's description of a protocol."""
    return {
        "protocol": config.protocol,
        "schedule": config.schedule,
        "steps": config.steps,
        "prune_steps": config.kp,
        "batch_size": config.batch_size,
        "patch": config.patch,
        "lr": config.lr,
        "betas": list(config.betas),
        "prune_edges": config.prune_edges,
        "alpha": config.alpha,
        "precision": config.precision,
        "seed": config.seed,
    }


def zoo_protocols() -> dict[str, dict]:
    """The manifest's ``protocols``: each (arch, scale)'s settings, read from its ISS-P
    entries' config."""
    return {
        protocol_key(arch, scale): protocol_settings(
            entry_config(ZooEntry(arch, scale, "issp", ratios[0]), None, "cpu")
        )
        for (arch, scale), ratios in PLAN_RATIOS.items()
    }


@dataclass(frozen=True)
class ZooFolders:
    """Where one zoo's files lie: checkpoints and manifest in ``zoo``, telemetry where
    ``catalogue.telemetry_folder`` says, runs in progress in ``work``."""

    zoo: Path
    work: Path

    @classmethod
    def of(cls, zoo_dir: Path | None = None) -> ZooFolders:
        """The zoo in ``zoo_dir`` (default: the checkout's checkpoints/). The checkout's
        zoo trains in runs/zoo/, another in its own ``work/``, so that a zoo built aside
        never resumes the served zoo's half-trained runs."""
        zoo = zoo_dir or catalogue.ZOO_DIR
        return cls(zoo, WORK_DIR if catalogue.is_checkout_zoo(zoo) else zoo / "work")

    @property
    def manifest(self) -> Path:
        return self.zoo / catalogue.MANIFEST_NAME

    @property
    def telemetry(self) -> Path:
        return catalogue.telemetry_folder(self.zoo)


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
        protocol=meta.get("protocol"),
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
    zoo_dir: Path | None = None,
    study_runs: study.RunFolders | None = None,
    train_studied: bool = False,
) -> None:
    """Train, evaluate and record every missing checkpoint of the zoo in ``zoo_dir``
    (default: the checkout's checkpoints/); resumable at any point.

    An entry whose run the study has finished in ``study_runs`` (default: its
    ``PROTOCOL`` folders) with the entry's settings is copied from there. One that the
    study's default plan will train but has not finished yet is left to the study (the
    next build copies it), unless ``train_studied``: training it twice would cost hours.
    """
    folders = ZooFolders.of(zoo_dir)
    study_runs = study_runs or study.RunFolders.of(PROTOCOL)
    waiting = set() if train_studied else {run.name for run in study.default_plan(data)}
    for folder in (folders.zoo, folders.work, folders.telemetry):
        folder.mkdir(parents=True, exist_ok=True)
    left = []
    for entry in zoo_plan():
        if only and only not in entry.name:
            continue
        if _is_built(entry, folders):
            continue
        config = entry_config(entry, data, device)
        run = study.StudyRun(study.run_name(config), config)
        finished = study_runs.finished_checkpoint(run)
        if finished is None and run.name in waiting:
            left.append(entry.name)
            continue
        copy = finished if finished and _trained_as(finished, config, log) else None
        work = folders.work / entry.file
        with _claim(work) as claimed:
            if not claimed:
                log(f"[{time.strftime('%H:%M:%S')}] skipping {entry.name}: another build has it")
            elif not _is_built(entry, folders):  # another build may have finished it meanwhile
                _make_entry(entry, config, work, folders, copy, test, log)
    if left:
        log(
            f"[{time.strftime('%H:%M:%S')}] left to the study, not finished yet in "
            f"{study_runs.results}: {', '.join(left)}; build again once `issp study run` has "
            "finished them (or pass --train-studied)"
        )


def _is_built(entry: ZooEntry, folders: ZooFolders) -> bool:
    final = folders.zoo / entry.file
    records = catalogue.read_manifest(folders.manifest).checkpoints
    done = [r for r in records if r.file == entry.file]
    return bool(done) and final.exists() and sha256(final) == done[0].sha256


@contextlib.contextmanager
def _claim(work: Path):
    """Hold a lock on one zoo entry, so that builds running side by side split the plan."""
    try:
        with FileLock(work.with_suffix(".lock"), timeout=0):
            yield True
    except Timeout:
        yield False


def _trained_as(checkpoint: Path, config: TrainConfig, log) -> bool:
    """Whether ``checkpoint``'s metadata agrees with ``config`` on what it is and every
    setting the zoo describes (``protocol_settings``); says where it does not."""
    meta = read_metadata(checkpoint)
    expected = protocol_settings(config) | {
        "preset": config.arch,
        "scale": config.scale,
        "method": config.method,
        "ratio": config.ratio,
    }
    # Metadata holds str(value) (JSON-decoded betas): compare in that form.
    differ = [key for key, value in expected.items() if str(meta.get(key)) != str(value)]
    if differ:
        log(f"[{time.strftime('%H:%M:%S')}] not reusing {checkpoint}: {', '.join(differ)} differ")
    return not differ


def _make_entry(
    entry: ZooEntry,
    config: TrainConfig,
    work: Path,
    folders: ZooFolders,
    copy: Path | None,
    test: Path | None,
    log,
) -> None:
    """Copy one entry from the study's checkpoint ``copy``, or train (resume) it; then move
    it into the zoo and record it."""
    started = time.time()
    if copy is not None:
        log(f"[{time.strftime('%H:%M:%S')}] reusing {entry.name}: the study's {copy}")
        copy_file(copy, work)
        if telemetry_path(copy).is_file():
            copy_file(telemetry_path(copy), telemetry_path(work))
    else:
        log(f"[{time.strftime('%H:%M:%S')}] training {entry.name}")
        train(config, work, resume=True)
    model, meta = load_checkpoint(work)
    final = folders.zoo / entry.file
    work.replace(final)
    if telemetry_path(work).is_file():
        telemetry_path(work).replace(folders.telemetry / f"{entry.name}.npz")
    record = _record(entry, final, model, meta, round(time.time() - started, 1))
    if test is not None:
        record = dataclasses.replace(record, scores=evaluate_checkpoint(model, test, entry.scale))
    with catalogue.updating_manifest(folders.manifest) as manifest:
        manifest.checkpoints = [r for r in manifest.checkpoints if r.file != entry.file]
        manifest.checkpoints.append(record)
        manifest.checkpoints.sort(key=lambda r: (r.arch, r.scale, r.method, r.ratio))
        manifest.protocols = zoo_protocols()
    state_path(work).unlink(missing_ok=True)
    set5 = record.scores.get(score_key("Set5"))
    log(
        f"[{time.strftime('%H:%M:%S')}] done {entry.name}"
        + (" (copied)" if copy else f" in {record.train_seconds:.0f} s")
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
    zoo_config = entry_config(ZooEntry("edsr-tiny", 2, "issp", ratio), data, device)
    base = dataclasses.replace(zoo_config, steps=steps, val_every=steps)
    runs = [("iht", None)] + [("issp", alpha) for alpha in alphas]
    rows = []
    for method, alpha in runs:
        config = dataclasses.replace(
            base, method=method, alpha=alpha if alpha is not None else base.alpha
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
        f"{steps} steps, Kp = {base.kp}, otherwise the zoo's `{base.protocol}` protocol. PSNR "
        "(Y) on the validation split carved out of the training images (never Set5/Set14).\n",
        "| run | validation PSNR (dB) | mask flips (all layers, all steps) |",
        "|---|---|---|",
    ]
    _, val_paths, _ = training_images(base)
    bicubic = evaluate_arrays(None, validation_crops(val_paths, base.scale), base.scale)["psnr"]
    lines.append(f"| bicubic (reference) | {bicubic:.3f} | |")
    lines += [f"| {label} | {psnr:.3f} | {flips:,.0f} |" for label, psnr, flips in rows]
    table = "\n".join(lines) + "\n"
    write_text(SWEEP, table)
    return table


@dataclass(frozen=True)
class ZooScores:
    """Every checkpoint scored again, and bicubic's scores per (arch, scale)."""

    records: list[Record]
    bicubic: dict[tuple[str, int], dict[str, Score]]


def evaluate_zoo(test: Path, zoo_dir: Path | None = None) -> ZooScores:
    """Re-evaluate every checkpoint (and bicubic) of the zoo in ``zoo_dir`` (default: the
    checkout's) and refresh its manifest."""
    folders = ZooFolders.of(zoo_dir)
    manifest = catalogue.read_manifest(folders.manifest)
    bicubic, records = {}, []
    for arch, scale in sorted({(r.arch, r.scale) for r in manifest.checkpoints}):
        bicubic[(arch, scale)] = evaluate_checkpoint(None, test, scale)
        for record in manifest.checkpoints:
            if (record.arch, record.scale) == (arch, scale):
                model, _ = catalogue.load_zoo_model(
                    arch, scale, record.method, record.ratio, manifest, folders.zoo
                )
                scores = record.scores | evaluate_checkpoint(model, test, scale)
                records.append(dataclasses.replace(record, scores=scores))
    scored = {(r.file, r.sha256): r.scores for r in records}
    with catalogue.updating_manifest(folders.manifest) as current:
        current.checkpoints = [
            dataclasses.replace(r, scores=scored.get((r.file, r.sha256), r.scores))
            for r in current.checkpoints
        ]
    return ZooScores(records, bicubic)


@dataclass(frozen=True)
class Verification:
    """What ``verify_zoo`` found for one manifest record; None where it did not look."""

    file: str
    protocol: str | None  # the record's; None in the first zoo's manifest
    exists: bool
    ok: bool = False
    sha256_ok: bool | None = None
    sparsity_error: float | None = None  # worst layer's |sparsity - ratio|
    set5_psnr: float | None = None  # measured now
    set5_manifest: float | None = None  # recorded


def verify_zoo(
    test: Path | None = None, tolerance_db: float = 0.02, zoo_dir: Path | None = None
) -> list[Verification]:
    """Check every entry of the zoo in ``zoo_dir`` (default: the checkout's) against its
    file, and (with ``test``) its Set5 PSNR.

    Per entry: the file exists, its sha256 matches, every pruned layer's sparsity is within
    0.5% of the ratio, and the Set5 PSNR measured now is within ``tolerance_db`` of the
    manifest's.
    """
    folders = ZooFolders.of(zoo_dir)
    if not folders.manifest.is_file():
        raise IsspError(f"no zoo to verify: {folders.manifest} does not exist")
    records = catalogue.read_manifest(folders.manifest).checkpoints
    return [_verify(record, folders.zoo, test, tolerance_db) for record in records]


def _verify(record: Record, zoo_dir: Path, test: Path | None, tolerance_db: float) -> Verification:
    path = zoo_dir / record.file
    if not path.is_file():
        return Verification(record.file, record.protocol, exists=False)
    if sha256(path) != record.sha256:
        # Not the file the manifest describes: nothing more to check.
        return Verification(record.file, record.protocol, exists=True, sha256_ok=False)
    layers = checkpoint_info(path)["layers"]
    error = max(
        (abs(1 - layer["nonzeros"] / layer["numel"] - record.ratio) for layer in layers),
        default=0.0,
    )
    found = Verification(record.file, record.protocol, True, error <= 0.005, True, error)
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
