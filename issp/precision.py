"""The bias test of bf16 autocast (``analysis/precision.md``): the 3-seed study's runs
again in bf16 with channels-last, each paired with its committed fp32 run of the same
name, to ask whether the cheaper arithmetic moves ISS-P minus IHT.

The rule was committed before the first bf16 run: bf16 is adopted for new studies only if
the 95% interval of the mean shift of ISS-P minus IHT (Set5, one value per cell and seed)
lies within ``±TOLERANCE`` dB. This module computes that figure and the others the file
registers, and writes them under its ``## Results`` heading, leaving the rest as it was.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from issp import study
from issp.files import write_text
from issp.methods import COMPARED

FAST = "bf16"  # the precision under test, a key of issp.train.PRECISIONS
SEEDS = (0, 1, 2)  # the seeds of the study's fp32 runs it is paired with
TOLERANCE = 0.15  # dB: the registered bound on the interval of the comparison's shift
DECIDING_METRIC = "set5"


def precision_plan(data: str | None, precision: str = FAST) -> list[study.StudyRun]:
    """The study's seed 0-2 runs (``study.default_plan``'s cells) in ``precision``."""
    scales = tuple(study.STEPS)
    return study.study_plan(
        study.PROTOCOL, study.STEPS, data, scales, study.RATIOS, SEEDS, precision=precision
    )


@dataclass(frozen=True)
class RunPair:
    """One run of the study in fp32 and the same run in the fast precision."""

    fp32: dict
    fast: dict

    def shift(self, metric: str) -> float:
        """Fast minus fp32 PSNR on ``metric`` (``set5``, ``set14`` or ``val``)."""
        return _score(self.fast, metric) - _score(self.fp32, metric)


def _score(result: dict, metric: str) -> float:
    return result["val_psnr"] if metric == "val" else result[metric]["psnr"]


def run_pairs(results: Path, data: str | None = None) -> list[RunPair]:
    """Every finished fast run paired with its fp32 twin, in plan order."""
    fp32 = precision_plan(data, "fp32")
    fast = precision_plan(data, FAST)
    pairs = []
    for slow_run, fast_run in zip(fp32, fast, strict=True):
        paths = slow_run.result_path(results), fast_run.result_path(results)
        if all(path.is_file() for path in paths):
            pairs.append(RunPair(*(json.loads(path.read_text()) for path in paths)))
    return pairs


def comparison_shifts(pairs: Sequence[RunPair], metric: str) -> study.PairedDifferences:
    """Per cell (scale, ratio) and seed where all four runs finished:
    ``(ISS-P − IHT)_fast − (ISS-P − IHT)_fp32`` on ``metric``."""
    cells: dict[tuple[int, float, int], dict[str, RunPair]] = {}
    for pair in pairs:
        config = pair.fp32["config"]
        if config["method"] in COMPARED:
            key = (config["scale"], config["ratio"], config["seed"])
            cells.setdefault(key, {})[config["method"]] = pair
    shifts = [
        runs["issp"].shift(metric) - runs["iht"].shift(metric)
        for _, runs in sorted(cells.items())
        if set(COMPARED) <= runs.keys()
    ]
    return study.PairedDifferences(tuple(shifts))


def run_shifts(pairs: Sequence[RunPair], metric: str) -> study.PairedDifferences:
    """Fast minus fp32 PSNR of each run on ``metric``."""
    return study.PairedDifferences(tuple(pair.shift(metric) for pair in pairs))


def cell_verdicts(pairs: Sequence[RunPair], metric: str) -> list[dict]:
    """Per cell, the study's verdict from the fp32 runs and from their fast twins (the
    same seeds: only those whose four runs finished)."""
    complete = _complete_pairs(pairs)
    rows = []
    for precision in ("fp32", "fast"):
        results = [getattr(pair, precision) for pair in complete]
        for row in study.study_summary(results, [metric]).values():
            rows.append((precision, row))
    by_cell: dict[tuple[int, float], dict[str, study.SummaryRow]] = {}
    for precision, row in rows:
        cell = by_cell.setdefault((row.scale, row.ratio), {})
        cell[precision] = row
    return [
        {
            "scale": scale,
            "ratio": ratio,
            "metric": metric,
            "seeds": cell["fp32"].seeds,
            "fp32": _verdict_figures(cell["fp32"]),
            FAST: _verdict_figures(cell["fast"]),
            # With one seed neither precision has a verdict to agree on.
            "agree": None
            if cell["fp32"].seeds < 2
            else cell["fp32"].verdict == cell["fast"].verdict,
        }
        for (scale, ratio), cell in sorted(by_cell.items())
        if cell["fp32"].seeds >= 1
    ]


def _complete_pairs(pairs: Sequence[RunPair]) -> list[RunPair]:
    """The pairs whose ISS-P and IHT partners at the same cell and seed both finished."""
    finished = {
        (c["scale"], c["ratio"], c["seed"], c["method"])
        for c in (pair.fp32["config"] for pair in pairs)
    }
    return [
        pair
        for pair in pairs
        if all(
            (c["scale"], c["ratio"], c["seed"], method) in finished
            for c in [pair.fp32["config"]]
            for method in COMPARED
        )
    ]


def _verdict_figures(row: study.SummaryRow) -> dict:
    figures = row.to_json()
    return {key: figures[key] for key in ("mean_difference", "interval95", "verdict")}


@dataclass(frozen=True)
class Decision:
    """The registered rule applied to the comparison's shift."""

    shift: study.PairedDifferences
    expected: int  # cells x seeds the rule was registered for

    @property
    def adopted(self) -> bool | None:
        """True or False once every pair has finished; None before."""
        if self.shift.n < self.expected:
            return None
        low, high = self.shift.interval
        return bool(low >= -TOLERANCE and high <= TOLERANCE)

    @property
    def words(self) -> str:
        if self.adopted is None:
            return (
                f"Pending: {self.shift.n} of {self.expected} paired comparisons have finished; "
                "the rule is applied only to all of them."
            )
        low, high = self.shift.interval
        where = f"[{low:+.3f}, {high:+.3f}] dB"
        if self.adopted:
            return (
                f"**bf16 is adopted for new studies**: the 95% interval of the shift, {where}, "
                f"lies within ±{TOLERANCE:g} dB."
            )
        return (
            f"**bf16 is not adopted for new studies**: the 95% interval of the shift, {where}, "
            f"reaches beyond ±{TOLERANCE:g} dB. New studies train in fp32 with channels-last."
        )


def precision_summary(pairs: Sequence[RunPair], reruns: Sequence[dict] = ()) -> dict:
    """Every figure the registered protocol asks for, as plain data, and the machine
    re-runs of its amendment."""
    cells = len(study.RATIOS) * len(study.STEPS)
    decision = Decision(comparison_shifts(pairs, DECIDING_METRIC), cells * len(SEEDS))
    summary: dict = {
        "pairs": len(pairs),
        "planned_pairs": len(precision_plan(None)),
        "tolerance_db": TOLERANCE,
        "adopted": decision.adopted,
        "decision": decision.words,
        "machines": sorted({pair.fast.get("machine", pair.fast["device"]) for pair in pairs}),
        "comparison_shift": {},
        "run_shift": {},
        "verdicts": {},
        "machine_reruns": list(reruns),
    }
    for metric in (DECIDING_METRIC, "set14", "val"):
        summary["comparison_shift"][metric] = _shift_figures(comparison_shifts(pairs, metric))
        summary["run_shift"][metric] = _shift_figures(run_shifts(pairs, metric))
    for metric in (DECIDING_METRIC, "set14"):
        summary["verdicts"][metric] = cell_verdicts(pairs, metric)
    summary["train_seconds"] = {
        "fp32": [p.fp32["train_seconds"] for p in pairs],
        FAST: [p.fast["train_seconds"] for p in pairs],
    }
    return summary


def machine_reruns(results: Path, reruns: Path) -> list[dict]:
    """fp32 runs trained again on another machine (``reruns``, same names), next to the
    committed ones in ``results``: how far the machine alone moves a run."""
    rows = []
    for path in sorted(reruns.glob("*.json")):
        committed = results / path.name
        if not committed.is_file():
            continue
        again, before = json.loads(path.read_text()), json.loads(committed.read_text())
        row = {"name": before["name"], "machine": again.get("machine", again["device"])}
        for metric in (DECIDING_METRIC, "set14", "val"):
            row[metric] = {"committed": _score(before, metric), "rerun": _score(again, metric)}
        rows.append(row)
    return rows


def _shift_figures(shift: study.PairedDifferences) -> dict:
    low, high = shift.interval
    return {
        "n": shift.n,
        "mean": shift.mean if shift.n else None,
        "interval95": None if math.isnan(low) else [low, high],
        "values": list(shift.differences),
    }


def _interval(figures: dict) -> str:
    if figures["interval95"] is None:
        return "-"
    low, high = figures["interval95"]
    return f"[{low:+.3f}, {high:+.3f}]"


def results_markdown(summary: dict, command: str) -> str:
    """The ``## Results`` section of ``analysis/precision.md``."""
    seconds = summary["train_seconds"]
    lines = [
        study.RESULTS_HEADING,
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d')} from "
        f"{summary['pairs']} of {summary['planned_pairs']} run pairs; bf16 runs trained on "
        f"{', '.join(summary['machines']) or '-'}, one torch thread each, median "
        f"{statistics.median(seconds[FAST]):.0f} s a run (their fp32 partners "
        f"{statistics.median(seconds['fp32']):.0f} s, on another machine under another load: "
        "not a speed comparison; `docs/benchmarks.md` has those).",
        "",
        f"Decision (rule 1): {summary['decision']}",
        "",
        "| statistic | test set | n | mean shift (dB) | 95% interval |",
        "|---|---|---|---|---|",
    ]
    names = {
        "comparison_shift": "ISS-P − IHT, bf16 minus fp32",
        "run_shift": "run PSNR, bf16 − fp32",
    }
    for key, name in names.items():
        for metric, figures in summary[key].items():
            mean = "-" if figures["mean"] is None else f"{figures['mean']:+.3f}"
            decides = key == "comparison_shift" and metric == DECIDING_METRIC
            deciding = " (decides)" if decides else ""
            lines.append(
                f"| {name}{deciding} | {study.metric_label(metric)} | {figures['n']} | {mean} "
                f"| {_interval(figures)} |"
            )
    lines.append("")
    if not any(summary["verdicts"].values()):
        lines += ["No cell has its ISS-P and IHT runs in both precisions at any seed yet.", ""]
    else:
        lines += [
            "Per cell, the study's verdict (ISS-P − IHT, 95% t-interval over the seeds both "
            "precisions finished) in each precision:",
            "",
            "| test set | scale | ratio | seeds | fp32: mean, interval, verdict "
            "| bf16: mean, interval, verdict | agree |",
            "|---|---|---|---|---|---|---|",
        ]
    for metric, rows in summary["verdicts"].items():
        for row in rows:
            both = [row[p] for p in ("fp32", FAST)]
            shown = [
                f"{v['mean_difference']:+.3f}, {_interval(v)}, {v['verdict']}"
                if v["mean_difference"] is not None
                else "-"
                for v in both
            ]
            lines.append(
                f"| {study.metric_label(metric)} | x{row['scale']} | {row['ratio']:g} "
                f"| {row['seeds']} | {shown[0]} | {shown[1]} "
                f"| {({True: 'yes', False: 'no', None: '-'})[row['agree']]} |"
            )
    lines += [
        "",
        "Rule 2: absolute goals are stated per precision from now on; the run shift above is "
        "how far bf16 moves a run's PSNR on average.",
        "",
    ]
    if summary["machine_reruns"]:
        lines += [
            "The machine alone (amendment): committed fp32 runs trained again, same code and "
            "arithmetic, on the machine named; PSNR in dB, re-run minus committed:",
            "",
            "| run | machine | Set5 | Set14 | validation |",
            "|---|---|---|---|---|",
        ]
        for row in summary["machine_reruns"]:
            moved = [
                f"{row[m]['rerun']:.3f} ({row[m]['rerun'] - row[m]['committed']:+.3f})"
                for m in (DECIDING_METRIC, "set14", "val")
            ]
            lines.append(f"| {row['name']} | {row['machine']} | {' | '.join(moved)} |")
        lines.append("")
    return "\n".join(lines)


def write_precision(
    pairs: Sequence[RunPair], command: str, out: Path, reruns: Sequence[dict] = ()
) -> dict:
    """Replace the ``## Results`` section of ``out/precision.md`` (what lies above it, the
    registered protocol, is kept) and write ``out/precision.json``. Returns the summary."""
    report = out / "precision.md"
    registered = study.registered_text(report)
    summary = precision_summary(pairs, reruns)
    write_text(report, registered + results_markdown(summary, command))
    data = {"command": command, **summary}
    write_text(out / "precision.json", json.dumps(data, indent=1) + "\n")
    return summary
