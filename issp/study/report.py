"""The study in words and tables: ``analysis/study.md`` and ``study.json``, the verdict
section of ``docs/study.md``, and the sentences and cells the Results tab and the
re-scoring report share with them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from issp import IsspError
from issp.catalogue import TEST_SETS, score_key
from issp.files import write_text
from issp.machine import machine_description
from issp.methods import COMPARED, label
from issp.study.plan import REPORT_DIR
from issp.study.stats import (
    Goal,
    SummaryRow,
    holm_survivors,
    mean_sd,
    study_goals,
    study_summary,
    summary_json,
)
from issp.zoo_report import DOCS, write_doc_section

STUDY_JSON = "study.json"  # the study's figures, in ``out`` (REPORT_DIR by default)


def summary_cells(row: SummaryRow) -> str:
    """A ``study_summary`` row's table cells from dense on: each method's scores, ISS-P
    minus IHT with its interval, the wins, the verdict and the p-values."""
    interval, mean = row.interval95, row.mean_difference
    p = "-" if row.p is None else f"{row.p:.3f} ({row.p_holm:.3f})"
    return (
        f"| {mean_sd(row.scores['dense'])} | {mean_sd(row.scores['iht'])} "
        f"| {mean_sd(row.scores['issp'])} "
        f"| {'-' if mean is None else f'{mean:+.3f}'} "
        f"| {'-' if interval is None else f'[{interval[0]:+.3f}, {interval[1]:+.3f}]'} "
        f"| {row.issp_wins} of {row.seeds} | {row.verdict} | {p} |"
    )


def holm_sentences(summary: dict[str, SummaryRow], metrics: Sequence[str]) -> list[str]:
    """Per test set, in words: which cells keep their verdict after Holm's correction."""
    lines = []
    for metric in (m for m in metrics if m != "val"):
        family = [r for r in summary.values() if r.metric == metric and r.p_holm is not None]
        if not family:
            continue
        kept = [
            f"x{row.scale} {row.ratio:g} ({row.verdict}, adjusted p {row.p_holm:.3f})"
            for row in holm_survivors(summary, metric)
        ]
        head = f"After Holm's correction across the {len(family)} cells of {metric_label(metric)}"
        lines.append(
            f"{head}, {len(kept)} keep a difference at the 5% level"
            + (f": {', '.join(kept)}." if kept else ".")
        )
    return lines


def _goals_table(goals: Sequence[Goal]) -> list[str]:
    lines = ["| goal (Set5, means over seeds) | figure | seeds | met |", "|---|---|---|---|"]
    for goal in goals:
        figure = "-" if goal.figure is None else f"{goal.figure:.3f} dB"
        met = {None: "not yet run", True: "met", False: "not met"}[goal.met]
        if goal.seeds == 1:
            met += " on 1 seed"
        lines.append(f"| {goal.text} ≥ {goal.at_least:g} dB | {figure} | {goal.seeds} | {met} |")
    return lines


def metric_label(metric: str) -> str:
    """How a metric is named in words: ``set5`` -> ``Set5``, ``val`` -> ``validation``."""
    names = {score_key(name): name for name in TEST_SETS} | {"val": "validation"}
    return names.get(metric, metric)


def _signed(value: float) -> str:
    # A typographic minus, so that +0.03 and −0.10 line up and read as numbers.
    return f"{value:+.2f}".replace("-", "−")


def seed_count(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def verdict_sentence(row: SummaryRow) -> str:
    """One (scale, ratio) of the study in words, as docs/study.md and the Results tab say it:
    the verdict, the mean paired difference, its 95% interval and the wins."""
    head = f"x{row.scale}, ratio {row.ratio:g}: **{row.verdict}**"
    issp, iht = label("issp"), label("iht")
    if row.mean_difference is None:
        return f"{head} — no seed has finished both {issp} and {iht} yet."
    if row.interval95 is None:
        within = "the 95% interval needs at least two seeds"
    else:
        low, high = row.interval95
        within = f"95% interval {_signed(low)} to {_signed(high)}"
    return (
        f"{head} — {issp} minus {iht} {_signed(row.mean_difference)} dB ({within}), "
        f"{issp} won {row.issp_wins} of {seed_count(row.seeds)}."
    )


def _finished(results: Sequence[dict], planned: int | None) -> str:
    return f"{len(results)} runs" if planned is None else f"{len(results)} of {planned} runs"


def verdict_markdown(
    results: Sequence[dict], metrics: Sequence[str], command: str, planned: int | None = None
) -> str:
    """The verdict per scale and ratio in plain words, then the goals: what ``study
    report`` writes between the ``study-verdict`` markers of ``docs/study.md``."""
    summary = study_summary(results, metrics)
    tests = [m for m in metrics if m != "val"] or list(metrics)
    devices = ", ".join(sorted({r["device"] for r in results}))
    lines = [
        f"From `{command}`, {_finished(results, planned)} on {devices} "
        f"({time.strftime('%Y-%m-%d')}); "
        "the tables are in `analysis/study.md`.",
        "",
    ]
    for metric in tests:
        lines.append(f"{metric_label(metric)} PSNR:")
        lines.append("")
        rows = (row for row in summary.values() if row.metric == metric)
        lines += [f"- {verdict_sentence(row)}" for row in rows]
        lines += ["", *holm_sentences(summary, [metric]), ""]
    return "\n".join([*lines, *_goals_table(study_goals(results))]) + "\n"


def _dynamics(by_seed: dict[int, dict[str, dict]], method: str, key: str) -> str:
    """``key`` of ``method``'s dynamics as a count, mean ± sd over seeds."""
    return mean_sd([runs[method][key] for runs in by_seed.values() if method in runs], ",.0f")


def flips_markdown(results: Sequence[dict]) -> list[str]:
    """The paper's second claim, paired by seed like the PSNR: mask flips during the
    pruning stage (``issp.zoo_report.MaskDynamics``) of ISS-P and IHT per scale and ratio."""
    cells: dict[tuple[int, float], dict[int, dict[str, dict]]] = {}
    for r in results:
        c = r["config"]
        if "dynamics" in r:
            by_seed = cells.setdefault((c["scale"], c["ratio"]), {})
            by_seed.setdefault(c["seed"], {})[c["method"]] = r["dynamics"]
    lines = []
    for (scale, ratio), by_seed in sorted(cells.items()):
        pairs = [runs for runs in by_seed.values() if set(COMPARED) <= runs.keys()]
        more = sum(p["issp"]["flips_before_kp"] > p["iht"]["flips_before_kp"] for p in pairs)
        issp = [runs["issp"] for runs in by_seed.values() if "issp" in runs]
        magnitude = [dynamics["selected_over_kept"] for dynamics in issp]
        lines.append(
            f"| x{scale} | {ratio:g} | {_dynamics(by_seed, 'iht', 'flips_before_kp')} "
            f"| {_dynamics(by_seed, 'issp', 'flips_before_kp')} | {more} of {len(pairs)} "
            f"| {_dynamics(by_seed, 'iht', 'flips_last_fifth')} "
            f"| {_dynamics(by_seed, 'issp', 'flips_last_fifth')} "
            f"| {f'{np.mean(magnitude):.4f}' if magnitude else '-'} |"
        )
    if not lines:
        return []
    return [
        "## Mask flips during pruning",
        "",
        "From each run's telemetry: mask flips over the pruning stage and over its last "
        "fifth (mean ± sd over seeds), the seeds where ISS-P flipped more than IHT from the "
        "same start, and ISS-P's mean |w| of the selected weights over the kept ones on the "
        "last pruning step, mean over seeds (IHT's is 0).",
        "",
        "| scale | ratio | IHT flips before Kp | ISS-P flips before Kp | ISS-P more in "
        "| IHT flips, last fifth | ISS-P flips, last fifth | ISS-P selected/kept at Kp |",
        "|---|---|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def study_markdown(
    results: Sequence[dict], metrics: Sequence[str], command: str, planned: int | None = None
) -> str:
    """``analysis/study.md``: the per-ratio verdicts, then every run's scores."""
    summary = study_summary(results, metrics)
    configs = [r["config"] for r in results]
    devices = sorted({r["device"] for r in results})
    protocols = sorted({c["protocol"] for c in configs})
    lines = [
        "# Does ISS-P beat IHT? The paired-seed study",
        "",
        f"Made by `{command}`; runs trained on {', '.join(devices)} "
        f"(this report written on {machine_description()}, {time.strftime('%Y-%m-%d')}).",
        f"Protocol: {', '.join(protocols)} (`issp/train.py`). edsr-tiny, "
        f"{_finished(results, planned)} finished. "
        "For each seed, ISS-P and IHT start from the same initial weights and see the same "
        "batches, so each seed gives one paired difference. PSNR in dB on the Y channel "
        "(`crop_border = scale`). The interval is the 95% t-interval of the mean paired "
        "difference; the verdict says ahead or behind only where it excludes 0.",
        "",
        "| scale | ratio | test set | dense | IHT | ISS-P | ISS-P − IHT (mean) | 95% interval "
        "| ISS-P wins | verdict | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.values():
        cells = f"| x{row.scale} | {row.ratio:g} | {metric_label(row.metric)} "
        lines.append(cells + summary_cells(row))
    lines += [
        "",
        "Scores are mean ± standard deviation over seeds. p is the two-sided paired t-test "
        "of a zero mean difference; in brackets, Holm's adjustment across the cells of the "
        "same test set (the family a reader scans for any win).",
        "",
        *holm_sentences(summary, metrics),
        "",
    ]
    lines += ["## Goals", "", *_goals_table(study_goals(results)), ""]
    lines += [*flips_markdown(results), "## Every run", ""]
    metrics = [m for m in metrics if m != "val"]
    lines += [
        "| run | "
        + " | ".join(f"{metric_label(m)} PSNR / SSIM" for m in metrics)
        + " | validation PSNR | train s |",
        "|---|" + "---|" * (len(metrics) + 2),
    ]
    for r in results:
        cells = [f"{r[m]['psnr']:.3f} / {r[m]['ssim']:.4f}" if m in r else "-" for m in metrics]
        seconds = f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['name']} | {' | '.join(cells)} | {r['val_psnr']:.3f} | {seconds} |")
    return "\n".join(lines) + "\n"


RESULTS_HEADING = "## Results"  # where a registered report's written part starts


def registered_text(report: Path) -> str:
    """The registered part of a pre-registered report (everything above its
    ``## Results`` heading), which a results writer keeps as it was; IsspError if the file
    lacks it."""
    text = report.read_text() if report.is_file() else ""
    if RESULTS_HEADING not in text:
        raise IsspError(f"{report} must hold the registered protocol and a {RESULTS_HEADING!r}")
    return text.split(RESULTS_HEADING, 1)[0]


def write_study(
    results: Sequence[dict],
    metrics: Sequence[str],
    command: str,
    out: Path = REPORT_DIR,
    planned: int | None = None,
) -> str:
    """Write ``study.md`` and ``study.json`` into ``out`` (and, for the checkout's report,
    docs/study.md's verdict); ``planned`` is how many runs the plan has. Returns the Markdown."""
    text = study_markdown(results, metrics, command, planned)
    write_text(out / "study.md", text)
    data = {
        "command": command,
        "planned_runs": planned,
        "summary": summary_json(study_summary(results, metrics)),
        "goals": [dataclasses.asdict(goal) | {"met": goal.met} for goal in study_goals(results)],
        "runs": list(results),
    }
    write_text(out / STUDY_JSON, json.dumps(data, indent=1, default=_json_number) + "\n")
    if out.resolve() == REPORT_DIR.resolve():  # the checkout's report: docs/study.md says it
        verdict = verdict_markdown(results, metrics, command, planned)
        write_doc_section(DOCS / "study.md", "study-verdict", verdict)
    return text


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
