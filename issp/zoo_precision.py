"""Rule 3 of ``analysis/precision.md``: which arithmetic gives the zoo more PSNR per
CPU-hour. One fp32 channels-last run of 3000 steps against one bf16 run given the same CPU
time (so more steps), paired by seed, scored on the validation split only
(``analysis/zoo-precision.md`` registers the runs, the step counts and the rule).

The bf16 run's length is ``3000 × t_cl / t_bf16`` rounded to a hundred, with the seconds
per step that ``benchmarks/train_step.py --json`` measured on the machine that trains the
runs, committed in ``analysis/zoo_precision_times.json`` before the first run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from issp import IsspError, study
from issp.files import write_text

PLAN = "zoo-precision"  # the runs' folder under analysis/study_runs/
SCALES = (2, 4)
RATIO = 0.95
SEEDS = (100, 101, 102)  # disjoint from every study and grid seed
BASE_STEPS = 3000  # the fp32 channels-last run: the zoo's length
ARMS = ("channels-last", "bf16")  # baseline first; keys of issp.train.PRECISIONS
TIMED = {"channels-last": "channels-last", "bf16": "bf16 + channels-last"}  # benchmark names
TIMES_FILE = study.REPORT_DIR / "zoo_precision_times.json"
REPORT_JSON = study.REPORT_DIR / "zoo-precision.json"
IN_BF16 = "the zoo is built in bf16"  # how a decision for bf16 begins


def equal_time_steps(times: dict, scale: int) -> int:
    """The bf16 run's steps at ``scale``: the fp32 channels-last run's CPU time in bf16
    steps, rounded to a hundred."""
    try:
        per_step = times["seconds_per_step"][f"edsr-tiny x{scale}"]
        ratio = per_step[TIMED["channels-last"]] / per_step[TIMED["bf16"]]
    except (KeyError, TypeError, ZeroDivisionError) as err:
        raise IsspError(f"the step times lack edsr-tiny x{scale} in both settings: {err}") from err
    return int(round(BASE_STEPS * ratio / 100) * 100)


def load_times(path: Path = TIMES_FILE) -> dict:
    """The committed output of ``benchmarks.train_step --json``."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise IsspError(f"cannot read the step times {path}: {err}") from err


def run_steps(times: dict) -> dict[str, dict[int, int]]:
    """Steps per arm and scale."""
    return {
        "channels-last": dict.fromkeys(SCALES, BASE_STEPS),
        "bf16": {scale: equal_time_steps(times, scale) for scale in SCALES},
    }


def zoo_precision_plan(data: str | None, times: dict) -> list[study.StudyRun]:
    """Both arms of every (seed, scale), seed-major so that whole pairs finish early."""
    steps = run_steps(times)
    return [
        run
        for seed in SEEDS
        for scale in SCALES
        for arm in ARMS
        for run in study.study_plan(
            study.PROTOCOL, steps[arm], data, (scale,), (RATIO,), (seed,), ("issp",), arm
        )
    ]


def pair_differences(runs: list[study.StudyRun], results: Path) -> tuple[list[dict], list[float]]:
    """Per finished (seed, scale): both runs' validation PSNR, steps and training seconds;
    and the bf16 − fp32 channels-last differences."""
    by_key: dict[tuple[int, int], dict[str, dict]] = {}
    for run in runs:
        path = run.result_path(results)
        if path.is_file():
            key = (run.config.seed, run.config.scale)
            by_key.setdefault(key, {})[run.config.precision] = json.loads(path.read_text())
    rows, differences = [], []
    for (seed, scale), arms in sorted(by_key.items()):
        if set(ARMS) <= arms.keys():
            row = {"seed": seed, "scale": scale}
            for arm in ARMS:
                result = arms[arm]
                row[arm] = {
                    "val_psnr": result["val_psnr"],
                    "steps": result["config"]["steps"],
                    "train_seconds": result["train_seconds"],
                    "machine": result.get("machine"),
                }
            row["difference"] = row["bf16"]["val_psnr"] - row["channels-last"]["val_psnr"]
            rows.append(row)
            differences.append(row["difference"])
    return rows, differences


def decision(shift: study.PairedDifferences, planned: int) -> str:
    """The registered rule, or what is missing before it can apply."""
    if shift.n < planned:
        return f"pending: {shift.n} of {planned} pairs finished"
    low, _ = shift.interval
    if shift.mean > 0 and low > 0:
        return f"{IN_BF16}: the interval of bf16 − fp32 lies above 0"
    return "the zoo stays in fp32 channels-last: the interval of bf16 − fp32 does not lie above 0"


def decided_bf16(path: Path = REPORT_JSON) -> bool | None:
    """Whether the committed decision builds the zoo in bf16; None while it is pending."""
    try:
        verdict = json.loads(path.read_text())["decision"]
    except (OSError, ValueError, KeyError) as err:
        raise IsspError(f"cannot read the zoo's precision decision {path}: {err}") from err
    return None if verdict.startswith("pending") else verdict.startswith(IN_BF16)


def results_markdown(
    rows: list[dict], shift: study.PairedDifferences, verdict: str, command: str
) -> str:
    """The ``## Results`` section of ``analysis/zoo-precision.md``."""
    lines = [
        study.RESULTS_HEADING,
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')}.",
        "",
    ]
    lines += [f"Decision: **{verdict}**.", ""]
    if shift.n >= 2:
        low, high = shift.interval
        lines += [
            f"bf16 − fp32 channels-last, validation PSNR, n = {shift.n}: mean {shift.mean:+.3f} "
            f"dB, 95% interval [{low:+.3f}, {high:+.3f}], bf16 ahead in {shift.wins}.",
            "",
        ]
    lines += [
        "| seed | scale | fp32-CL steps | fp32-CL s | fp32-CL val | bf16 steps | bf16 s "
        "| bf16 val | bf16 − fp32-CL |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        slow, fast = row["channels-last"], row["bf16"]
        lines.append(
            f"| {row['seed']} | x{row['scale']} | {slow['steps']} | {slow['train_seconds']:.0f} "
            f"| {slow['val_psnr']:.3f} | {fast['steps']} | {fast['train_seconds']:.0f} "
            f"| {fast['val_psnr']:.3f} | {row['difference']:+.3f} |"
        )
    if rows:
        seconds = {arm: sum(row[arm]["train_seconds"] for row in rows) for arm in ARMS}
        lines += [
            "",
            f"Measured training seconds, all pairs: fp32 channels-last {seconds[ARMS[0]]:.0f}, "
            f"bf16 {seconds[ARMS[1]]:.0f} (bf16 / fp32 = {seconds[ARMS[1]] / seconds[ARMS[0]]:.2f}"
            "; 1 is the registered equal time).",
        ]
    machines = sorted({row[arm]["machine"] or "?" for row in rows for arm in ARMS})
    lines += ["", f"Machines: {', '.join(machines) or '-'}; one torch thread per run.", ""]
    return "\n".join(lines)


def write_zoo_precision(runs: list[study.StudyRun], results: Path, command: str, out: Path) -> dict:
    """Replace the results section of ``out/zoo-precision.md`` (its registered part is
    kept) and write ``out/zoo-precision.json`` from the finished ``runs``; returns the
    summary."""
    report = out / "zoo-precision.md"
    registered = study.registered_text(report)
    rows, differences = pair_differences(runs, results)
    shift = study.PairedDifferences(tuple(differences))
    verdict = decision(shift, len(runs) // len(ARMS))
    write_text(report, registered + results_markdown(rows, shift, verdict, command))
    low, high = shift.interval
    summary = {
        "command": command,
        "decision": verdict,
        "pairs": rows,
        "mean": shift.mean if shift.n else None,
        "interval95": [low, high] if shift.n >= 2 else None,
    }
    write_text(out / "zoo-precision.json", json.dumps(summary, indent=1) + "\n")
    return summary
