"""Re-scoring the study's committed checkpoints on any folder of images.

Every study run keeps its checkpoint beside its result (``analysis/study_runs/<protocol>/``),
so a later question (another test set, a photo collection the project has never seen)
costs an evaluation, not a training run. The report is the study's own: per cell, ISS-P
minus IHT paired by seed with its interval and verdict, and per image the mean paired
difference, so one can see whether a cell's verdict rests on a few images.

    python -m issp study rescore --test ../shared/data/test/Set14
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from issp import IsspError, study
from issp.checkpoint import load_checkpoint
from issp.data import find_images
from issp.evaluate import Pair, evaluate_arrays, scoreable_pairs
from issp.files import write_text
from issp.machine import machine_description
from issp.methods import COMPARED

# LR pixels per tile side: Set5/Set14 fit in one tile (scores as ``study run`` made them);
# a large photo is cut into tiles (overlap 16 px, equal to the untiled output up to float
# error) so that memory stays bounded whatever the image size.
TILE = 512
RESCORE_DIR = study.REPORT_DIR / "rescore"


def usable_pairs(folder: Path, scale: int, log: Callable[[str], None] = print) -> list[Pair]:
    """``(name, lr, hr)`` of every image in ``folder`` that can be scored at ``scale``;
    unreadable images and those too small for the metrics are skipped with a line each."""
    pairs = list(
        scoreable_pairs(
            folder, find_images(folder), scale, lambda name, why: log(f"skipped {name}: {why}")
        )
    )
    if not pairs:
        raise IsspError(f"no image in {folder} can be scored at x{scale}")
    return pairs


def rescore(
    runs: Sequence[study.StudyRun],
    results: Path,
    folder: Path,
    key: str,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Each finished run of ``runs`` with a committed checkpoint in ``results``, its result
    as committed plus ``key``: its scores on ``folder`` (means and per-image rows)."""
    kept = [
        run
        for run in runs
        if run.result_path(results).is_file() and run.checkpoint_path(results).is_file()
    ]
    if not kept:
        raise IsspError(f"no finished run in {results} has its checkpoint committed")
    pairs: dict[int, list[Pair]] = {}
    rescored = []
    for number, run in enumerate(kept, start=1):
        scale = run.config.scale
        if scale not in pairs:
            pairs[scale] = usable_pairs(folder, scale, log)
        model, _ = load_checkpoint(run.checkpoint_path(results))
        scores = evaluate_arrays(model, pairs[scale], scale, tile=TILE)
        result = json.loads(run.result_path(results).read_text())
        if key in result:  # scored on these images when it finished: kept to compare
            result["committed"] = {key: result[key]}
        result[key] = scores
        rescored.append(result)
        log(f"({number} of {len(kept)}) {run.name}: {scores['psnr']:.3f} dB")
    return rescored


def per_image_differences(rescored: Sequence[dict], key: str) -> dict[str, dict[str, float]]:
    """Per cell (``x2 r0.95``) and image: ISS-P minus IHT PSNR, mean over the seeds where
    both ran."""
    by_cell: dict[tuple[int, float], dict[int, dict[str, dict[str, float]]]] = {}
    for result in rescored:
        config = result["config"]
        if config["method"] in COMPARED:
            seeds = by_cell.setdefault((config["scale"], config["ratio"]), {})
            rows = {row["name"]: row["psnr"] for row in result[key]["images"]}
            seeds.setdefault(config["seed"], {})[config["method"]] = rows
    table = {}
    for (scale, ratio), seeds in sorted(by_cell.items()):
        both = [runs for runs in seeds.values() if set(COMPARED) <= runs.keys()]
        if both:
            names = both[0]["issp"].keys()
            table[f"x{scale} r{ratio:g}"] = {
                name: float(np.mean([runs["issp"][name] - runs["iht"][name] for runs in both]))
                for name in names
            }
    return table


def reproduction(rescored: Sequence[dict], key: str) -> float | None:
    """The largest |rescored − committed| run PSNR where the run was scored on ``key``
    when it finished (the same images), else None."""
    gaps = [
        abs(r[key]["psnr"] - r["committed"][key]["psnr"])
        for r in rescored
        if key in r.get("committed", {})
    ]
    return max(gaps) if gaps else None


def rescore_markdown(rescored: Sequence[dict], key: str, folder: Path, command: str) -> str:
    """The paired report of a re-scoring, as ``study report`` lays it out."""
    summary = study.study_summary(rescored, [key])
    lines = [
        f"# The study's checkpoints re-scored on `{folder.name}`",
        "",
        f"Made by `{command}` on {machine_description()}, {time.strftime('%Y-%m-%d')}: "
        f"{len(rescored)} committed checkpoints, each evaluated on every usable image of "
        f"`{folder}` as `issp eval` does (Y-channel PSNR and SSIM, `crop_border = scale`). "
        "ISS-P minus IHT is paired by seed; the interval is the 95% t-interval.",
        "",
        "| scale | ratio | dense | IHT | ISS-P | ISS-P − IHT (mean) | 95% interval "
        "| ISS-P wins | verdict | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.values():
        lines.append(f"| x{row.scale} | {row.ratio:g} " + study.summary_cells(row))
    lines += ["", *study.holm_sentences(summary, [key]), ""]
    gap = reproduction(rescored, key)
    if gap is not None:
        lines += [
            f"Against the scores each run committed for `{key}` when it finished: largest "
            f"|difference| {gap:.4f} dB.",
            "",
        ]
    table = per_image_differences(rescored, key)
    if table:
        cells = list(table)
        lines += [
            "Per image, ISS-P minus IHT PSNR (dB), mean over seeds:",
            "",
            "| image | " + " | ".join(cells) + " |",
            "|---|" + "---|" * len(cells),
        ]
        for name in table[cells[0]]:
            lines.append(
                f"| {name} | " + " | ".join(f"{table[c][name]:+.3f}" for c in cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def write_rescore(
    rescored: Sequence[dict],
    key: str,
    folder: Path,
    command: str,
    out: Path = RESCORE_DIR,
    name: str | None = None,
) -> Path:
    """Write ``<name>.md`` and ``<name>.json`` (every run's per-image scores) into ``out``;
    ``name`` defaults to ``key``, the scores' key."""
    name = name or key
    report = out / f"{name}.md"
    write_text(report, rescore_markdown(rescored, key, folder, command))
    data = {
        "command": command,
        "folder": str(folder),
        "summary": study.summary_json(study.study_summary(rescored, [key])),
        "largest_gap_to_committed": reproduction(rescored, key),
        "runs": [{"name": r["name"], "config": r["config"], key: r[key]} for r in rescored],
    }
    write_text(out / f"{name}.json", json.dumps(data, indent=1) + "\n")
    return report
