"""The authors' other modes paired by seed (``analysis/modes.md``): ISS-P with an N:M
selection against ISS-P per layer at the same sparsity, and GReg against IHT, on
swinir-tiny x2. For information beside the study, registered before its runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from issp import study
from issp.files import write_text
from issp.train import TrainConfig
from issp.zoo import OWN_SETTINGS

ARCH, SCALE = "swinir-tiny", 2
PATTERN = "19:20"  # as the authors write it; 23:24 on every swinir-tiny layer
SAME_SPARSITY = 23 / 24  # what 19:20 prunes of swinir-tiny (issp.selection.nm_groups)
SEEDS = (0, 1, 2)
METRICS = ("set5", "set14", "val")


@dataclass(frozen=True)
class Pair:
    """Two arms compared seed by seed: ``first`` minus ``second``."""

    name: str
    first: dict  # TrainConfig settings of the first arm
    second: dict


PAIRS = (
    Pair(
        "A: ISS-P 19:20 minus ISS-P per layer (both 95.83%)",
        # A pattern's ratio is its N / M (TrainConfig refuses any other); the authors' rule
        # makes 19:20 prune SAME_SPARSITY of swinir-tiny, which the other arm asks for.
        {"method": "issp", "ratio": 19 / 20, "pattern": PATTERN},
        {"method": "issp", "ratio": SAME_SPARSITY},
    ),
    Pair(
        "B: GReg minus IHT (per layer, 0.95)",
        {"method": "greg", "ratio": 0.95},
        {"method": "iht", "ratio": 0.95},
    ),
)


def arm_run(settings: dict, seed: int, data: str | None) -> study.StudyRun:
    """One arm at one seed, on the protocol ``analysis/modes.md`` registers."""
    config = TrainConfig.of_protocol(
        study.PROTOCOL,
        arch=ARCH,
        scale=SCALE,
        seed=seed,
        data=data,
        workers=0,
        **OWN_SETTINGS[(ARCH, SCALE)],
        **settings,
    )
    config = dataclasses.replace(config, val_every=config.steps)
    return study.StudyRun(study.run_name(config), config)


def modes_plan(data: str | None) -> list[study.StudyRun]:
    """Every run, seed-major so that whole pairs finish early."""
    return [
        arm_run(settings, seed, data)
        for seed in SEEDS
        for pair in PAIRS
        for settings in (pair.first, pair.second)
    ]


def pair_differences(pair: Pair, results: Path, metric: str) -> study.PairedDifferences:
    """``pair.first`` minus ``pair.second`` on ``metric`` at each seed where both finished."""
    differences = []
    for seed in SEEDS:
        paths = [arm_run(arm, seed, None).result_path(results) for arm in (pair.first, pair.second)]
        if all(path.is_file() for path in paths):
            first, second = (json.loads(path.read_text()) for path in paths)
            score = [
                r["val_psnr"] if metric == "val" else r[metric]["psnr"] for r in (first, second)
            ]
            differences.append(score[0] - score[1])
    return study.PairedDifferences(tuple(differences))


def modes_summary(results: Path) -> dict:
    """Per pair and metric: the differences, their mean, 95% interval and wins."""
    summary = {}
    for pair in PAIRS:
        rows = {}
        for metric in METRICS:
            shift = pair_differences(pair, results, metric)
            low, high = shift.interval
            rows[metric] = {
                "differences": list(shift.differences),
                "mean": shift.mean if shift.n else None,
                "interval95": [low, high] if shift.n >= 2 else None,
                "wins": shift.wins,
                "seeds": shift.n,
            }
        summary[pair.name] = rows
    return summary


def results_markdown(summary: dict, command: str) -> str:
    """The ``## Results`` section of ``analysis/modes.md``."""
    lines = [
        study.RESULTS_HEADING,
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}. PSNR in dB, first arm minus "
        "second, paired by seed.",
        "",
        "| pair | test set | seeds | differences | mean | 95% interval | first arm wins "
        "| reading |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in summary.items():
        for metric, row in rows.items():
            interval, mean = row["interval95"], row["mean"]
            if interval is None:
                reading = "too few seeds"
            else:
                reading = "tie" if interval[0] <= 0 <= interval[1] else "difference"
            lines.append(
                f"| {name} | {study.metric_label(metric)} | {row['seeds']} "
                f"| {', '.join(f'{d:+.3f}' for d in row['differences']) or '-'} "
                f"| {'-' if mean is None else f'{mean:+.3f}'} "
                f"| {'-' if interval is None else f'[{interval[0]:+.3f}, {interval[1]:+.3f}]'} "
                f"| {row['wins']} of {row['seeds']} | {reading} |"
            )
    return "\n".join(lines) + "\n"


def arms_markdown(results: Path) -> list[str]:
    """Every finished run: its arm, seed, PSNR on each test set and training seconds (the
    absolute figures behind the paired differences)."""
    lines = [
        "| arm | seed | Set5 | Set14 | validation | train s |",
        "|---|---|---|---|---|---|",
    ]
    for pair in PAIRS:
        for arm in (pair.first, pair.second):
            for seed in SEEDS:
                run = arm_run(arm, seed, None)
                path = run.result_path(results)
                if not path.is_file():
                    continue
                result = json.loads(path.read_text())
                lines.append(
                    f"| {run.name} | {seed} | {result['set5']['psnr']:.3f} "
                    f"| {result['set14']['psnr']:.3f} | {result['val_psnr']:.3f} "
                    f"| {result['train_seconds']:.0f} |"
                )
    return lines if len(lines) > 2 else []


def write_modes(results: Path, command: str, out: Path) -> dict:
    """Replace the results section of ``out/modes.md`` (the registered part above it is
    kept) and write ``out/modes.json``; returns the summary."""
    report = out / "modes.md"
    registered = study.registered_text(report)
    summary = modes_summary(results)
    runs = arms_markdown(results)
    table = "\n".join(["", "Every finished run:", "", *runs, ""]) if runs else ""
    write_text(report, registered + results_markdown(summary, command) + table)
    write_text(
        (out / "modes.json"), json.dumps({"command": command, "pairs": summary}, indent=1) + "\n"
    )
    return summary


def finished(runs: Sequence[study.StudyRun], results: Path) -> int:
    """How many of ``runs`` have a result in ``results``."""
    return sum(run.result_path(results).is_file() for run in runs)
