"""Study v2's claims table: one row per claim of the paper, with its registered test, its
figure, its verdict in words and whether it is final, interim or pending
(``analysis/claims-protocol.md``; the statistics are ``issp.study.claims``).

Set5 decides; the PSNR claims (C1, C2, C3, C6) are also computed on Set14 as the protocol's
secondary test set, which decides nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from issp.methods import label
from issp.pruning import RIGL_INTERVAL
from issp.study.claims import (
    C4_MAJORITY,
    CELLS,
    LEVEL,
    RIVALS,
    SEEDS,
    SPARSE,
    SWINIR_CELLS,
    CellTest,
    Measure,
    SeedTrend,
    amplification,
    by_seed,
    cell_tests,
    complete,
    grad_cv,
    layer_spread,
    log_flips,
    loss_end,
    overall,
    ranks,
    seed_means,
    set5,
    set14,
)

# What a pending claim waits for, in the protocol's order of phases.
WAITS = {
    "C1": "the edsr-tiny study of dense, IHT and ISS-P (phase 1)",
    "C2": "all six edsr-tiny cells of ISS-P and IHT (phase 1)",
    "C3": "the swinir-tiny study (phase 3)",
    "C4": "the edsr-tiny study of dense, IHT and ISS-P (phase 1)",
    "C5": "the edsr-tiny study of dense, IHT and ISS-P (phase 1)",
    "C6": "GMP and RigL on edsr-tiny (phase 2)",
}
C2_WORDS = "advantages amplified at higher pruning ratios and scales"
C2_TEST = "per seed: slope of the ISS-P − IHT gap against the ratio (x 0.09) and x4 minus x2"


@dataclass(frozen=True)
class ClaimRow:
    """One claim: the paper's words, its registered test, the figure and the verdict."""

    claim: str
    words: str
    test: str
    figure: str
    verdict: str
    status: str  # "final", "interim (k of n cells)" or "pending"
    evidence: list[dict]


def _status(done: int, planned: int) -> str:
    if done == 0:
        return "pending"
    return "final" if done == planned else f"interim ({done} of {planned} cells)"


def _holm(done: int, planned: int, noun: str = "cells") -> str:
    """The Holm family as used: the full one, or the part of it in so far (protocol: an
    interim report's family is the cells it has)."""
    if done in (0, planned):
        return f"Holm over the {planned} {noun}"
    return f"Holm over the {done} {noun} in so far ({planned} at the end)"


def _interval(trend: SeedTrend) -> str:
    low, high = trend.interval
    return f"{np.mean(trend.values):+.3f} dB [{low:+.3f}, {high:+.3f}]"


def _cells_figure(tests: Sequence[CellTest], unit: str = " dB") -> str:
    parts = []
    for test in tests:
        low, high = test.comparison.interval
        parts.append(
            f"{test.cell.label} vs {test.rival}: {test.comparison.mean:+.3f}{unit} "
            f"[{low:+.3f}, {high:+.3f}], {test.call}"
        )
    return "; ".join(parts) or "-"


def _tested_row(
    claim: str,
    words: str,
    test: str,
    tests: Sequence[CellTest],
    planned: int,
    majority: int = 1,
    unit: str = " dB",
) -> ClaimRow:
    done = len({t.cell for t in tests})
    verdict = overall([t.call for t in tests], majority) if tests else "pending"
    if verdict == "not shown" and majority > 1 and any(t.call == "ahead" for t in tests):
        ahead = sum(t.call == "ahead" for t in tests)
        verdict = f"not shown (ahead in {ahead}, fewer than {majority})"
    return ClaimRow(
        claim,
        words,
        test.format(holm=_holm(done, planned)),
        _cells_figure(tests, unit),
        verdict,
        _status(done, planned),
        [t.to_json() for t in tests],
    )


def _c2(results: Sequence[dict], psnr: Measure) -> ClaimRow:
    trends = amplification(results, psnr)
    if trends is None:
        return ClaimRow("C2", C2_WORDS, C2_TEST, "-", "pending", "pending", [])
    ratio, scale = trends
    verdicts = {ratio.verdict, scale.verdict}
    if verdicts == {"supported"}:
        verdict = "supported"
    elif "contradicted" in verdicts and "supported" not in verdicts:
        verdict = "contradicted"
    else:
        verdict = f"ratio: {ratio.verdict}; scale: {scale.verdict}"
    figure = f"0.9→0.99 {_interval(ratio)}; x4 − x2 {_interval(scale)}"
    evidence = [ratio.to_json() | {"part": "ratio"}, scale.to_json() | {"part": "scale"}]
    status = "final (its 6 edsr-tiny cells are all in)"
    return ClaimRow("C2", C2_WORDS, C2_TEST, figure, verdict, status, evidence)


def _c3(results: Sequence[dict], psnr: Measure, test_set: str) -> ClaimRow:
    row = _tested_row(
        "C3",
        "generalizes to transformers",
        f"ISS-P − IHT, {test_set}, swinir-tiny, {{holm}}; the per-seed mean gap over both",
        cell_tests(results, SWINIR_CELLS, ("iht",), psnr),
        len(SWINIR_CELLS),
    )
    mean = seed_means(results, SWINIR_CELLS, psnr)
    if mean is None:
        return row
    figure = f"{row.figure}; both cells, per seed: {_interval(mean)}"
    evidence = [*row.evidence, mean.to_json() | {"part": "mean over both cells"}]
    return ClaimRow(row.claim, row.words, row.test, figure, row.verdict, row.status, evidence)


def _c5(results: Sequence[dict]) -> ClaimRow:
    """C5 by its deciding measure, with the two figures the protocol reports beside it in
    the evidence (paired ISS-P − IHT per cell, lower is better, deciding nothing)."""
    row = _tested_row(
        "C5",
        "more regularized gradient flow",
        "CV of the global gradient norm over the pruning stage, ISS-P − IHT, {holm}",
        cell_tests(results, CELLS, ("iht",), grad_cv, lower_is_better=True),
        len(CELLS),
        unit="",
    )
    reported = [
        t.to_json() | {"reported": name}
        for name, measure in (
            ("loss at the end of pruning", loss_end),
            ("layer spread", layer_spread),
        )
        for t in cell_tests(results, CELLS, ("iht",), measure, lower_is_better=True)
    ]
    return ClaimRow(
        row.claim, row.words, row.test, row.figure, row.verdict, row.status, row.evidence + reported
    )


def _c6(results: Sequence[dict], psnr: Measure, test_set: str) -> ClaimRow:
    """C6: ISS-P against IHT, GMP and RigL in each cell where all four finished every seed,
    Holm over those comparisons; each method's rank by mean PSNR."""
    cells = [cell for cell in CELLS if complete(results, cell, SPARSE, psnr)]
    tests = cell_tests(results, cells, RIVALS, psnr)
    counts = dict.fromkeys(
        ["ISS-P best", *(f"ISS-P behind {label(r)}" for r in RIVALS), "ISS-P tied with the best"],
        0,
    )
    statements = []
    for cell in cells:
        mine = [t for t in tests if t.cell == cell]
        behind = [label(t.rival) for t in mine if t.call == "behind"]
        if all(t.call == "ahead" for t in mine):
            outcomes = ["ISS-P best"]
        elif behind:
            outcomes = [f"ISS-P behind {name}" for name in behind]
        else:
            outcomes = ["ISS-P tied with the best"]
        for outcome in outcomes:
            counts[outcome] += 1
        places = ranks(results, cell, psnr)
        order = ", ".join(f"{label(m)} {places[m]}" for m in sorted(SPARSE, key=places.get))
        statements.append(f"{cell.label}: {'; '.join(outcomes)} (ranks: {order})")
    return ClaimRow(
        "C6",
        "ISS-P against the strongest sparse-training baselines",
        f"ISS-P − each of IHT, GMP, RigL, {test_set}, "
        + _holm(len(RIVALS) * len(cells), len(RIVALS) * len(CELLS), "comparisons"),
        "; ".join(statements) or "-",
        _c6_verdict(counts, len(cells)),
        _status(len(cells), len(CELLS)),
        [t.to_json() for t in tests],
    )


def _c6_verdict(counts: dict[str, int], cells: int) -> str:
    """The outcomes that held, each with its count of cells, then those that held in none:
    "ISS-P tied with the best in 6 of 6 cells; in no cell: ISS-P best, ..."."""
    if not cells:
        return "pending"
    held = [f"{words} in {n} of {cells} cells" for words, n in counts.items() if n]
    never = [words for words, n in counts.items() if not n]
    return "; ".join(held + ([f"in no cell: {', '.join(never)}"] if never else []))


def claim_rows(results: Sequence[dict]) -> list[ClaimRow]:
    """C1-C6 as registered in ``analysis/claims-protocol.md``, from the study's run files,
    decided on Set5."""
    return [
        _tested_row(
            "C1",
            "better PSNR than IHT",
            "ISS-P − IHT, Set5, paired by seed, {holm}",
            cell_tests(results, CELLS, ("iht",), set5),
            len(CELLS),
        ),
        _c2(results, set5),
        _c3(results, set5, "Set5"),
        _tested_row(
            "C4",
            "more active sparse-structure dynamics (mask flips)",
            "log10(flips before Kp + 1), ISS-P − IHT, {holm}; supported if more in ≥ 5",
            cell_tests(results, CELLS, ("iht",), log_flips),
            len(CELLS),
            C4_MAJORITY,
            " log10",
        ),
        _c5(results),
        _c6(results, set5, "Set5"),
    ]


def secondary_rows(results: Sequence[dict]) -> list[ClaimRow]:
    """The PSNR claims (C1, C2, C3, C6) computed the same way on Set14, deciding nothing."""
    c1 = _tested_row(
        "C1",
        "better PSNR than IHT",
        "ISS-P − IHT, Set14, paired by seed, {holm}",
        cell_tests(results, CELLS, ("iht",), set14),
        len(CELLS),
    )
    return [c1, _c2(results, set14), _c3(results, set14, "Set14"), _c6(results, set14, "Set14")]


def _table(rows: Sequence[ClaimRow]) -> list[str]:
    lines = [
        "| claim | the paper says | test | figure | verdict | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.claim, row.words, row.test, row.figure, f"**{row.verdict}**", row.status)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return lines


def notes(
    rows: Sequence[ClaimRow], uncalled: Sequence[str] = (), unplanned: Sequence[str] = ()
) -> list[str]:
    """What the table alone does not say: what each pending claim waits for, the runs left
    out and why, and RigL's registered limitation."""
    lines = [
        f"{row.claim} is pending: it waits for {WAITS[row.claim]}."
        for row in rows
        if row.status == "pending"
    ]
    if uncalled:
        lines.append(
            "Diverged (a compared figure not finite), left out of every comparison they are in: "
            + ", ".join(uncalled)
            + "."
        )
    if unplanned:
        lines.append(f"Run files outside the plan, left out: {', '.join(unplanned)}.")
    lines.append(
        f"RigL's limitation, as registered: its mask freezes at Kp like every method's, so it "
        f"makes one update every {RIGL_INTERVAL} steps before Kp (7 on edsr-tiny, 4 on "
        "swinir-tiny), where its paper updates until 75% of training."
    )
    return lines


def cell_means(results: Sequence[dict], psnr: Measure = set5) -> list[str]:
    """Every method's mean Set5 PSNR and seed SD per cell: the context of the tests, dense
    included (it is in none of them)."""
    methods = ("dense", *SPARSE)
    lines = [
        "| cell | " + " | ".join(label(m) for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for cell in CELLS:
        parts = [
            _mean_sd([psnr(r) for r in by_seed(results, cell, method).values()])
            for method in methods
        ]
        lines.append(f"| {cell.label} | " + " | ".join(parts) + " |")
    return lines


def _mean_sd(values: Sequence[float]) -> str:
    """Mean ± SD (n) of the finite values; a diverged run (amendment 1) is counted, not
    averaged, so one nan does not blank its cell's context."""
    if not values:
        return "-"
    finite = [v for v in values if np.isfinite(v)]
    diverged = f", {len(values) - len(finite)} diverged" if len(finite) < len(values) else ""
    if not finite:
        return f"- (n=0{diverged})"
    sd = f" ± {np.std(finite, ddof=1):.3f}" if len(finite) > 1 else ""
    return f"{np.mean(finite):.3f}{sd} (n={len(finite)}{diverged})"


def claims_markdown(
    rows: Sequence[ClaimRow],
    results: Sequence[dict],
    command: str,
    secondary: Sequence[ClaimRow] = (),
    uncalled: Sequence[str] = (),
    unplanned: Sequence[str] = (),
    planned: int | None = None,
    figure: Path | None = None,
) -> str:
    """The claims table (Set5, deciding), what pending claims wait for, the runs left out,
    RigL's limitation, the forest plot ``figure`` (a file beside the report) where there
    is one, every method's Set5 PSNR per cell and the Set14 table."""
    lines = [
        "# Study v2: the paper's claims, each by its registered test",
        "",
        f"Made by `{command}` from {len(results)} run files in `analysis/study_runs/claims/`"
        + ("" if planned is None else f" (of the {planned} the grid's choices so far call for)")
        + ". "
        "The tests and decision rules are those of `analysis/claims-protocol.md`, committed "
        "before the first run; a cell is called only where ISS-P and the method it is compared "
        f"with (for C6, all four sparse methods) finished all {len(SEEDS)} seeds. "
        "Intervals are 95% t-intervals over seeds; "
        f"Holm-adjusted p < {LEVEL} calls a cell. Set5 decides.",
        "",
        *_table(rows),
        "",
    ]
    lines += [f"- {note}" for note in notes(rows, uncalled, unplanned)] + [""]
    if figure is not None:
        lines += [
            f"![Paired differences per cell, Set5: mean, 95% interval, seeds]({figure.name})",
            "",
        ]
    lines += [
        "## Each method's Set5 PSNR per cell (context: mean ± SD over seeds)",
        "",
        *cell_means(results),
        "",
    ]
    if secondary:
        lines += ["## Set14 (secondary: computed the same way, deciding nothing)", ""]
        lines += [*_table(secondary), ""]
    return "\n".join(lines)


def claims_json(rows: Sequence[ClaimRow]) -> list[dict]:
    """The rows with their evidence, for ``analysis/claims.json``."""
    return [
        {
            "claim": r.claim,
            "words": r.words,
            "test": r.test,
            "figure": r.figure,
            "verdict": r.verdict,
            "status": r.status,
            "evidence": r.evidence,
        }
        for r in rows
    ]


def checks_markdown(out: Path) -> str:
    """A pointer to the reading of each exploratory check registered beside the study: none
    decides anything here, but a reader of the verdicts should know of them."""
    lines = []
    alpha_edge, machine = out / "alpha-edge.json", out / "machine-check.json"
    if alpha_edge.is_file():
        reading = json.loads(alpha_edge.read_text())["reading"]
        lines.append(
            f"- ISS-P's alpha beyond the grid's edge (`analysis/alpha-edge.md`): {reading}."
        )
    if machine.is_file():
        check = json.loads(machine.read_text())
        lines.append(
            f"- C6 with every run on one machine (`analysis/machine-check.md`, {check['runs']} "
            f"of {check['planned']} runs): {check['set5']['reading']}."
        )
    if not lines:
        return ""
    return (
        "\n## Checks beside the study (exploratory, deciding nothing)\n\n" + "\n".join(lines) + "\n"
    )


def machines_markdown(study: Sequence[dict], grid: Sequence[dict]) -> str:
    """How many of the counted study runs and of the grid runs each machine trained, per
    architecture: run files name their machine, and the sessions were not all lent one."""
    counts = Counter(
        (run["config"]["arch"], kind, run.get("machine", "not recorded"))
        for kind, runs in (("study", study), ("grid", grid))
        for run in runs
    )
    lines = [
        "\n## Machines\n",
        "Each run file names the machine that trained it; to retrain a run bit for bit, use "
        "that machine (two CPUs' kernels may round differently).\n",
        "| architecture | runs | machine | count |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {arch} | {kind} | {machine} | {n} |"
        for (arch, kind, machine), n in sorted(counts.items())
    ]
    return "\n".join(lines) + "\n"
