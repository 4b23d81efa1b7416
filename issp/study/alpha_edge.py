"""ISS-P's alpha beyond the edge of study v2's grid (``analysis/alpha-edge.md``): an
exploratory check, registered before its runs, that decides nothing in study v2.

Study v2's grid chose ISS-P's alpha at the top of its grid (0.9, 0.95, 0.99). This trains
ISS-P at the next alphas up, at the rate the grid chose and on the grid's seeds and
ratios, one alpha after another for as long as each beats every alpha below it, and
scores them as the grid does: the mean validation PSNR over their runs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from issp import IsspError
from issp.files import write_text
from issp.study import v2
from issp.study.plan import REPORT_DIR, RunFolders, StudyRun
from issp.study.report import RESULTS_HEADING, registered_text
from issp.study.runner import execute
from issp.study.stats import PairedDifferences

# Tried in this order; the next only if the last scored above every alpha below it.
BEYOND = (0.995, 0.999)
PLAN = "claims-alpha-edge"


def chosen(grid_done: dict[str, dict], data: str | None) -> v2.Setting:
    """ISS-P's setting as study v2's edsr-tiny grid chose it; IsspError until it has."""
    precision = v2.precision_of(v2.EDSR)
    choice = v2.Grid(v2.EDSR, grid_done, data, precision).choice(("issp",))
    if choice is None:
        raise IsspError("study v2's edsr-tiny grid has not chosen ISS-P's setting yet")
    return choice["issp"]


def alpha_runs(lr: float, alpha: float, data: str | None) -> list[StudyRun]:
    """ISS-P at ``lr`` and ``alpha`` on the grid's seeds and ratios, as a v2 grid run."""
    setting = v2.Setting("issp", lr, alpha)
    return v2.setting_runs(v2.EDSR, setting, v2.GRID_SEEDS, data, v2.precision_of(v2.EDSR))


def scores(
    grid_done: dict[str, dict], done: dict[str, dict], data: str | None
) -> dict[float, float | None]:
    """Each alpha's score by study v2's grid (``Grid.score``: None until all its runs
    finished, minus infinity for a diverged one): v2's alphas from its grid's runs, those
    beyond from this check's."""
    setting = chosen(grid_done, data)
    grid = v2.Grid(v2.EDSR, grid_done | done, data, v2.precision_of(v2.EDSR))
    alphas = (*sorted({v2.ALPHA, *v2.OTHER_ALPHAS}), *BEYOND)
    return {a: grid.score(v2.Setting("issp", setting.lr, a), v2.GRID_SEEDS) for a in alphas}


def next_runs(
    grid_done: dict[str, dict], done: dict[str, dict], data: str | None
) -> list[StudyRun]:
    """The runs this check needs next: the first alpha beyond the grid still unfinished,
    unless the one before it failed to beat every alpha below it. Empty when it is over."""
    setting = chosen(grid_done, data)
    score = scores(grid_done, done, data)
    for alpha in BEYOND:
        below = [s for a, s in score.items() if a < alpha]
        if not all(s is not None and math.isfinite(s) for s in below):
            return []
        if alpha != BEYOND[0] and below[-1] <= max(below[:-1]):
            return []
        missing = [run for run in alpha_runs(setting.lr, alpha, data) if run.name not in done]
        if missing:
            return missing
    return []


def folders() -> RunFolders:
    return RunFolders.of(PLAN)


def per_seed(
    grid_done: dict[str, dict], done: dict[str, dict], alpha: float, data: str | None
) -> PairedDifferences:
    """Per grid seed where both finished: ``alpha``'s validation PSNR minus the registered
    alpha's, averaged over the grid's ratios."""
    setting = chosen(grid_done, data)
    found = grid_done | done
    differences = []
    for seed in v2.GRID_SEEDS:
        by_alpha = [
            [
                found.get(run.name, {}).get("val_psnr")
                for run in alpha_runs(setting.lr, a, data)
                if run.config.seed == seed
            ]
            for a in (alpha, setting.alpha)
        ]
        if None not in by_alpha[0] + by_alpha[1]:
            differences.append(float(np.mean(by_alpha[0]) - np.mean(by_alpha[1])))
    return PairedDifferences(tuple(differences))


def reading(score: dict[float, float | None], registered: float, complete: bool) -> str:
    """The registered reading of ``analysis/alpha-edge.md`` once the check is complete."""
    if not complete:
        return "not complete yet"
    finished = {a: s for a, s in score.items() if s is not None}
    best = max(finished, key=finished.get)
    if best == registered:
        return "the registered choice is the best of the extended grid; its edge did not bind"
    gain = finished[best] - finished[registered]
    return (
        f"alpha {best:g} scores {gain:+.3f} dB above {registered:g} on validation; "
        "the registered grid's edge bound ISS-P"
    )


def summary(grid_done: dict[str, dict], done: dict[str, dict], data: str | None) -> dict:
    """Every alpha's score, the per-seed context beside the registered alpha, the reading."""
    setting = chosen(grid_done, data)
    score = scores(grid_done, done, data)
    complete = not next_runs(grid_done, done, data)
    context = {}
    for alpha in BEYOND:
        shift = per_seed(grid_done, done, alpha, data)
        if shift.n:
            context[alpha] = shift.to_json()
    return {
        "lr": setting.lr,
        "registered_alpha": setting.alpha,
        "scores": score,
        "per_seed": context,
        "runs": sorted(done),
        "complete": complete,
        "reading": reading(score, setting.alpha, complete),
    }


def results_markdown(result: dict, done: dict[str, dict], command: str) -> str:
    """The ``## Results`` section of ``analysis/alpha-edge.md``."""
    lines = [
        RESULTS_HEADING,
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}. ISS-P, edsr-tiny x2, "
        f"lr {result['lr']:g}; each alpha's mean validation PSNR over ratios "
        f"{', '.join(map(str, v2.GRID_RATIOS))} and seeds {', '.join(map(str, v2.GRID_SEEDS))}.",
        "",
        f"Reading: **{result['reading']}**.",
        "",
        "| alpha | mean validation PSNR (dB) | runs from |",
        "|---|---|---|",
    ]
    for alpha, score in result["scores"].items():
        shown = "-" if score is None else f"{score:.3f}" if math.isfinite(score) else "diverged"
        if score is None and result["complete"]:
            shown = "not run: the alpha before it scored below an alpha under it"
        mark = " (registered choice)" if alpha == result["registered_alpha"] else ""
        source = "this check" if alpha in BEYOND else "study v2's grid"
        lines.append(f"| {alpha:g}{mark} | {shown} | {source} |")
    if result["per_seed"]:
        lines += [
            "",
            f"Context, deciding nothing: per seed, validation PSNR minus alpha "
            f"{result['registered_alpha']:g}'s, averaged over both ratios.",
            "",
            "| alpha | per seed (dB) | mean | 95% interval |",
            "|---|---|---|---|",
        ]
        for alpha, row in result["per_seed"].items():
            interval = row["interval95"]
            shown = "-" if interval is None else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
            seeds = ", ".join(f"{d:+.3f}" for d in row["differences"])
            lines.append(f"| {alpha:g} | {seeds} | {row['mean']:+.3f} | {shown} |")
    if done:
        lines += [
            "",
            "Every finished run of this check:",
            "",
            "| run | validation PSNR (dB) | train s |",
        ]
        lines += ["|---|---|---|"]
        lines += [
            f"| {name} | {r['val_psnr']:.3f} | {r['train_seconds']:.0f} |"
            for name, r in sorted(done.items())
        ]
    return "\n".join(lines) + "\n"


def write(command: str, out: Path = REPORT_DIR) -> dict:
    """Replace the results section of ``out/alpha-edge.md`` (its registered part is kept)
    and write ``out/alpha-edge.json``; returns the summary."""
    report = out / "alpha-edge.md"
    registered = registered_text(report)
    grid_done, done = v2.finished(v2.grid_folders()), v2.finished(folders())
    result = summary(grid_done, done, None)
    write_text(report, registered + results_markdown(result, done, command))
    as_json = result | {"scores": {f"{a:g}": s for a, s in result["scores"].items()}}
    as_json["per_seed"] = {f"{a:g}": row for a, row in result["per_seed"].items()}
    write_text(
        (out / "alpha-edge.json"), json.dumps({"command": command} | as_json, indent=1) + "\n"
    )
    return result


def run(
    data: str | None,
    jobs: int,
    threads: int | None,
    log: Callable[[str], None] = print,
) -> None:
    """Train what the check needs, alpha by alpha, resuming from its committed run files."""
    grid_done = v2.finished(v2.grid_folders())
    while runs := next_runs(grid_done, v2.finished(folders()), data):
        alpha = runs[0].config.alpha
        log(f"[{time.strftime('%H:%M:%S')}] ISS-P at alpha {alpha:g}: {len(runs)} runs to go")
        execute(runs, folders(), {}, jobs, log, 1 if threads is None else threads)
