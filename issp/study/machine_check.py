"""C6 on one machine (``analysis/machine-check.md``): a check of study v2, registered before
its runs, that decides nothing in it.

Study v2's edsr-tiny runs of ISS-P trained on one machine and those of GMP and RigL on
another, so C6's ISS-P − GMP and ISS-P − RigL comparisons pair runs of two machines. This
retrains ISS-P's 30 edsr-tiny study runs on GMP's and RigL's machine, measures the machine
effect on ISS-P paired by seed, and calls those comparisons again with one machine's runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from issp import IsspError
from issp.files import write_text
from issp.machine import machine_description
from issp.study import v2
from issp.study.claims import EDSR_CELLS, Cell, CellTest, Measure, by_seed, cell_tests, set5, set14
from issp.study.plan import REPORT_DIR, RunFolders, StudyRun
from issp.study.report import RESULTS_HEADING, registered_text
from issp.study.runner import execute, test_folders
from issp.study.stats import PairedDifferences

PLAN = "claims-machine"
# The machine GMP's and RigL's edsr-tiny study runs name, as machine_description words it.
MACHINE = "Intel(R) Xeon(R) Processor, 2 cores, torch 2.13.0+cpu"
RIVALS = ("gmp", "rigl")
MEASURES = {"set5": set5, "set14": set14}


def folders() -> RunFolders:
    return RunFolders.of(PLAN)


def issp_runs(grid_done: dict[str, dict], data: str | None) -> list[StudyRun]:
    """ISS-P's edsr-tiny study runs, named and configured as study v2's."""
    precision = v2.precision_of(v2.EDSR)
    chosen = v2.Grid(v2.EDSR, grid_done, data, precision).choice(("issp",))
    if chosen is None:
        raise IsspError("study v2's edsr-tiny grid has not chosen ISS-P's setting yet")
    return v2.study_runs(v2.EDSR, chosen, data, precision)


def run(
    data: str | None,
    test: Path | None,
    jobs: int,
    threads: int | None,
    log: Callable[[str], None] = print,
    machine: str | None = None,
) -> None:
    """Train the runs the check still needs, on ``MACHINE`` only."""
    here = machine_description() if machine is None else machine
    if here != MACHINE:
        raise IsspError(f"this check trains on {MACHINE} only; this machine is {here}")
    if test is None:
        raise IsspError("the check scores its runs on Set5 and Set14: give --test")
    done = v2.finished(folders())
    runs = [r for r in issp_runs(v2.finished(v2.grid_folders()), data) if r.name not in done]
    log(f"[{time.strftime('%H:%M:%S')}] ISS-P on {MACHINE}: {len(runs)} runs to go")
    execute(runs, folders(), test_folders(test), jobs, log, 1 if threads is None else threads)


def machine_effect(
    again: Sequence[dict], before: Sequence[dict], measure: Measure
) -> tuple[dict[Cell, PairedDifferences], PairedDifferences]:
    """ISS-P retrained minus ISS-P as study v2 trained it, paired by seed: per cell, and
    each seed's mean over the 6 cells (for the seeds every cell has on both sides)."""
    per_cell = {}
    by_cell_seed = {}
    for cell in EDSR_CELLS:
        new, old = by_seed(again, cell, "issp"), by_seed(before, cell, "issp")
        seeds = sorted(new.keys() & old.keys())
        by_cell_seed[cell] = {s: measure(new[s]) - measure(old[s]) for s in seeds}
        if seeds:
            per_cell[cell] = PairedDifferences(tuple(by_cell_seed[cell].values()))
    shared = set.intersection(*(set(d) for d in by_cell_seed.values()))
    pooled = tuple(float(np.mean([d[s] for d in by_cell_seed.values()])) for s in sorted(shared))
    return per_cell, PairedDifferences(pooled)


def summary(study_done: Sequence[dict], again: Sequence[dict], claims: dict) -> dict:
    """Both figures of the check, per test set, with the registered C6 calls beside the
    one-machine ones."""
    rivals = [r for r in study_done if r["config"]["method"] in RIVALS]
    out = {"runs": len(again), "planned": 5 * len(EDSR_CELLS)}
    for key, measure in MEASURES.items():
        per_cell, pooled = machine_effect(again, study_done, measure)
        tests = cell_tests([*again, *rivals], EDSR_CELLS, RIVALS, measure)
        registered = claims if key == "set5" else {"claims": claims.get("set14", [])}
        out[key] = {
            "machine_effect": {cell.label: d.to_json() for cell, d in per_cell.items()},
            "machine_effect_over_cells": pooled.to_json(),
            "c6_one_machine": [t.to_json() | {"registered": _call(registered, t)} for t in tests],
        }
        out[key]["reading"] = reading(pooled, tests, registered)
    return out


def _call(claims: dict, test: CellTest) -> str | None:
    """The registered C6's call in ``test``'s cell against its rival, if it made one."""
    for claim in claims.get("claims", []):
        if claim["claim"] == "C6":
            for row in claim["evidence"]:
                if (row["cell"], row["rival"]) == (test.cell.label, test.rival):
                    return row["call"]
    return None


def reading(pooled: PairedDifferences, tests: Sequence[CellTest], claims: dict) -> str:
    """The registered reading of both figures, as far as the finished runs go."""
    if pooled.n < 2:
        effect = "machine effect: not yet two seeds retrained in every cell"
    else:
        low, high = pooled.interval
        shown = f"{pooled.mean:+.3f} dB [{low:+.3f}, {high:+.3f}]"
        holds = low <= 0 <= high
        effect = f"no machine effect shown ({shown})" if holds else f"a machine effect of {shown}"
    differ = [
        f"{t.cell.label} vs {t.rival}: {t.call} on one machine, {_call(claims, t)} registered"
        for t in tests
        if t.call != _call(claims, t)
    ]
    agree = f"C6 on one machine agrees with the registered C6 in {len(tests) - len(differ)} "
    agree += f"of {len(tests)} comparisons" + (f" ({'; '.join(differ)})" if differ else "")
    return f"{effect}; {agree}"


def results_markdown(result: dict, command: str) -> str:
    """The ``## Results`` section of ``analysis/machine-check.md``."""
    lines = [
        RESULTS_HEADING,
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} from {result['runs']} of the "
        f"{result['planned']} retrained runs (`analysis/study_runs/{PLAN}/`).",
    ]
    for key, name in (("set5", "Set5 (deciding)"), ("set14", "Set14 (secondary)")):
        part = result[key]
        lines += ["", f"### {name}", "", f"Reading: **{part['reading']}**.", ""]
        lines += ["| cell | ISS-P Xeon − ISS-P EPYC per seed (dB) | mean | 95% interval |"]
        lines += ["|---|---|---|---|"]
        rows = [
            *part["machine_effect"].items(),
            ("over the 6 cells", part["machine_effect_over_cells"]),
        ]
        for label, row in rows:
            lines.append(f"| {label} | {_seeds(row)} | {_mean(row)} | {_interval(row)} |")
        lines += [
            "",
            "| cell | rival | ISS-P − rival, one machine | p (Holm) | call | registered call |",
        ]
        lines += ["|---|---|---|---|---|---|"]
        for test in part["c6_one_machine"]:
            shown = f"{test['mean']:+.3f} {_interval(test)}"
            lines.append(
                f"| {test['cell']} | {test['rival']} | {shown} | {test['p_holm']:.3g} "
                f"| {test['call']} | {test['registered'] or '-'} |"
            )
    return "\n".join(lines) + "\n"


def _seeds(row: dict) -> str:
    return ", ".join(f"{d:+.3f}" for d in row["differences"]) or "-"


def _mean(row: dict) -> str:
    return f"{row['mean']:+.3f}" if row["differences"] else "-"


def _interval(row: dict) -> str:
    interval = row.get("interval95")
    return "-" if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def write(command: str, out: Path = REPORT_DIR) -> dict:
    """Replace the results section of ``out/machine-check.md`` (its registered part is kept)
    and write ``out/machine-check.json``; returns the summary."""
    report = out / "machine-check.md"
    registered = registered_text(report)
    again = list(v2.finished(folders()).values())
    claims_file = out / "claims.json"
    claims = json.loads(claims_file.read_text()) if claims_file.is_file() else {}
    planned = v2.planned_names(v2.finished(v2.grid_folders()))
    study = [r for name, r in v2.finished(v2.study_folders()).items() if name in planned]
    result = summary(study, again, claims)
    write_text(report, registered + results_markdown(result, command))
    write_text(
        out / "machine-check.json", json.dumps({"command": command} | result, indent=1) + "\n"
    )
    return result
