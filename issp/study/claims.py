"""Study v2's verdict on each of the paper's claims, by the tests registered before its runs.

``analysis/claims-protocol.md`` fixed the cells, the seeds and, per claim, the statistic
and the rule that turns it into words. This module applies them to the study's run files
(the result dicts ``issp study`` writes: config, Set5/Set14 scores, mask dynamics and
gradient flow) and nothing else: there is no threshold here that the protocol does not
state. A claim whose cells are not all complete at every seed is reported from the cells
that are, labelled interim; one with none is pending.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from issp.study.stats import PairedDifferences, holm

EDSR, SWINIR = "edsr-tiny", "swinir-tiny"
SEEDS = (0, 1, 2, 3, 4)
LEVEL = 0.05  # Holm-adjusted p below which a cell is called
SPARSE = ("issp", "iht", "gmp", "rigl")
RIVALS = ("iht", "gmp", "rigl")  # C6: ISS-P against each
C4_MAJORITY = 5  # C4 is supported when ISS-P flips more in at least this many cells
RATIO_SPAN = 0.99 - 0.9  # C2's slope is stated as the change in gap over this span


@dataclass(frozen=True, order=True)
class Cell:
    """One (architecture, scale, ratio) of the study."""

    arch: str
    scale: int
    ratio: float

    @property
    def label(self) -> str:
        return f"{self.arch} x{self.scale} {self.ratio:g}"


CELLS = (
    *(Cell(EDSR, scale, ratio) for scale in (2, 4) for ratio in (0.9, 0.95, 0.99)),
    Cell(SWINIR, 2, 0.9),
    Cell(SWINIR, 2, 0.99),
)
EDSR_CELLS = tuple(cell for cell in CELLS if cell.arch == EDSR)
SWINIR_CELLS = tuple(cell for cell in CELLS if cell.arch == SWINIR)

Measure = Callable[[dict], float]


def set5(result: dict) -> float:
    return result["set5"]["psnr"]


def set14(result: dict) -> float:
    return result["set14"]["psnr"]


def log_flips(result: dict) -> float:
    """C4: log10 of the mask flips summed over layers during the pruning stage, plus one."""
    return math.log10(result["dynamics"]["flips_before_kp"] + 1)


def grad_cv(result: dict) -> float:
    """C5: the CV of the global gradient norm over the pruning stage (lower: smoother)."""
    return result["gradient_flow"]["grad_cv"]


def by_seed(results: Sequence[dict], cell: Cell, method: str) -> dict[int, dict]:
    """The runs of ``method`` in ``cell``, by seed."""
    found = {}
    for result in results:
        config = result["config"]
        if (
            config["arch"] == cell.arch
            and config["scale"] == cell.scale
            and config["method"] == method
            and math.isclose(config["ratio"], cell.ratio)
        ):
            found[config["seed"]] = result
    return found


def complete(results: Sequence[dict], cell: Cell, methods: Sequence[str]) -> bool:
    """Whether every method has finished every seed of the study in ``cell``."""
    return all(set(SEEDS) <= by_seed(results, cell, m).keys() for m in methods)


def compare(
    results: Sequence[dict], cell: Cell, first: str, second: str, measure: Measure
) -> PairedDifferences:
    """``first`` minus ``second`` on ``measure``, paired by seed, in seed order."""
    one, two = by_seed(results, cell, first), by_seed(results, cell, second)
    seeds = sorted(set(SEEDS) & one.keys() & two.keys())
    return PairedDifferences(tuple(measure(one[s]) - measure(two[s]) for s in seeds))


@dataclass(frozen=True)
class CellTest:
    """One paired comparison in one cell, with its Holm-adjusted p within its claim."""

    cell: Cell
    rival: str
    comparison: PairedDifferences
    p_holm: float
    lower_is_better: bool = False

    @property
    def call(self) -> str:
        """ "ahead", "behind" (for ISS-P) or "tie", by the protocol's rule."""
        if not self.p_holm < LEVEL:
            return "tie"
        better = self.comparison.mean < 0 if self.lower_is_better else self.comparison.mean > 0
        return "ahead" if better else "behind"

    def to_json(self) -> dict:
        low, high = self.comparison.interval
        return {
            "cell": self.cell.label,
            "rival": self.rival,
            "differences": list(self.comparison.differences),
            "mean": self.comparison.mean,
            "interval95": [low, high],
            "p": self.comparison.p_value,
            "p_holm": self.p_holm,
            "call": self.call,
        }


def cell_tests(
    results: Sequence[dict],
    cells: Sequence[Cell],
    rivals: Sequence[str],
    measure: Measure,
    lower_is_better: bool = False,
) -> list[CellTest]:
    """ISS-P against each rival in each complete cell, Holm-adjusted over all of them."""
    pairs = [
        (cell, rival, compare(results, cell, "issp", rival, measure))
        for cell in cells
        for rival in rivals
        if complete(results, cell, ("issp", rival))
    ]
    adjusted = holm([pair.p_value for _, _, pair in pairs])
    return [
        CellTest(cell, rival, pair, p, lower_is_better)
        for (cell, rival, pair), p in zip(pairs, adjusted, strict=True)
    ]


def overall(calls: Sequence[str], majority: int = 1) -> str:
    """The protocol's words for a claim over its cells' calls."""
    ahead, behind = calls.count("ahead"), calls.count("behind")
    if ahead >= majority and not behind:
        return "supported"
    if behind and not ahead:
        return "contradicted"
    if ahead and behind:
        return "mixed"
    return "not shown"


@dataclass(frozen=True)
class SeedTrend:
    """A per-seed figure of C2 (one value per seed), with its 95% interval."""

    values: tuple[float, ...]

    @property
    def interval(self) -> tuple[float, float]:
        return PairedDifferences(self.values).interval

    @property
    def verdict(self) -> str:
        low, high = self.interval
        if low > 0:
            return "supported"
        if high < 0:
            return "contradicted"
        return "not shown"

    def to_json(self) -> dict:
        low, high = self.interval
        return {
            "per_seed": list(self.values),
            "mean": float(np.mean(self.values)),
            "interval95": [low, high],
            "verdict": self.verdict,
        }


def amplification(results: Sequence[dict]) -> tuple[SeedTrend, SeedTrend] | None:
    """C2 on edsr-tiny: per seed, the least-squares slope of the ISS-P − IHT Set5 gap against
    the ratio over the six cells (times ``RATIO_SPAN``), and the mean gap at x4 minus at
    x2. None until all six cells are complete."""
    if not all(complete(results, cell, ("issp", "iht")) for cell in EDSR_CELLS):
        return None
    gaps = {cell: compare(results, cell, "issp", "iht", set5).differences for cell in EDSR_CELLS}
    ratios = [cell.ratio for cell in EDSR_CELLS]
    slopes, scales = [], []
    for k in range(len(SEEDS)):
        per_cell = [gaps[cell][k] for cell in EDSR_CELLS]
        slopes.append(float(np.polyfit(ratios, per_cell, 1)[0]) * RATIO_SPAN)
        x4 = np.mean([gaps[c][k] for c in EDSR_CELLS if c.scale == 4])
        x2 = np.mean([gaps[c][k] for c in EDSR_CELLS if c.scale == 2])
        scales.append(float(x4 - x2))
    return SeedTrend(tuple(slopes)), SeedTrend(tuple(scales))


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


def _cells_figure(tests: Sequence[CellTest], unit: str = "dB") -> str:
    parts = []
    for test in tests:
        low, high = test.comparison.interval
        parts.append(
            f"{test.cell.label} vs {test.rival}: {test.comparison.mean:+.3f} {unit} "
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
    unit: str = "dB",
) -> ClaimRow:
    done = len({t.cell for t in tests})
    verdict = overall([t.call for t in tests], majority) if tests else "pending"
    return ClaimRow(
        claim,
        words,
        test,
        _cells_figure(tests, unit),
        verdict,
        _status(done, planned),
        [t.to_json() for t in tests],
    )


def claim_rows(results: Sequence[dict]) -> list[ClaimRow]:
    """C1-C6 as registered in ``analysis/claims-protocol.md``, from the study's run files."""
    rows = [
        _tested_row(
            "C1",
            "better PSNR than IHT",
            "ISS-P − IHT, Set5, paired by seed, Holm over the 8 cells",
            cell_tests(results, CELLS, ("iht",), set5),
            len(CELLS),
        )
    ]
    trends = amplification(results)
    if trends is None:
        rows.append(
            ClaimRow(
                "C2",
                "advantages amplified at higher pruning ratios and scales",
                "per seed: slope of the ISS-P − IHT gap against the ratio (x 0.09) and x4 minus x2",
                "-",
                "pending",
                "pending",
                [],
            )
        )
    else:
        ratio, scale = trends
        verdicts = {ratio.verdict, scale.verdict}
        verdict = (
            "supported"
            if verdicts == {"supported"}
            else "contradicted"
            if "contradicted" in verdicts and "supported" not in verdicts
            else f"ratio: {ratio.verdict}; scale: {scale.verdict}"
        )
        figure = "; ".join(
            f"{name} {np.mean(t.values):+.3f} dB [{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]"
            for name, t in (("0.9→0.99", ratio), ("x4 − x2", scale))
        )
        rows.append(
            ClaimRow(
                "C2",
                "advantages amplified at higher pruning ratios and scales",
                "per seed: slope of the ISS-P − IHT gap against the ratio (x 0.09) and x4 minus x2",
                figure,
                verdict,
                "final",
                [ratio.to_json() | {"part": "ratio"}, scale.to_json() | {"part": "scale"}],
            )
        )
    rows += [
        _tested_row(
            "C3",
            "generalizes to transformers",
            "ISS-P − IHT, Set5, swinir-tiny, Holm over 2",
            cell_tests(results, SWINIR_CELLS, ("iht",), set5),
            len(SWINIR_CELLS),
        ),
        _tested_row(
            "C4",
            "more active sparse-structure dynamics (mask flips)",
            "log10(flips before Kp + 1), ISS-P − IHT, Holm over 8; supported if more in ≥ 5",
            cell_tests(results, CELLS, ("iht",), log_flips),
            len(CELLS),
            C4_MAJORITY,
            "log10",
        ),
        _tested_row(
            "C5",
            "more regularized gradient flow",
            "CV of the global gradient norm over the pruning stage, ISS-P − IHT, Holm over 8",
            cell_tests(results, CELLS, ("iht",), grad_cv, lower_is_better=True),
            len(CELLS),
            unit="",
        ),
    ]
    rows.append(_c6(results))
    return rows


def rank(results: Sequence[dict], cell: Cell) -> int:
    """ISS-P's place (1 = best) among the sparse methods by mean Set5 PSNR in ``cell``."""
    means = {m: np.mean([set5(r) for r in by_seed(results, cell, m).values()]) for m in SPARSE}
    return 1 + sum(means[m] > means["issp"] for m in SPARSE if m != "issp")


def _c6(results: Sequence[dict]) -> ClaimRow:
    """C6: ISS-P against IHT, GMP and RigL in each cell, Holm over all comparisons."""
    tests = cell_tests(results, CELLS, RIVALS, set5)
    outcomes, statements = [], []
    for cell in sorted({t.cell for t in tests}):
        mine = [t for t in tests if t.cell == cell]
        if len(mine) < len(RIVALS):
            continue
        behind = [t.rival for t in mine if t.call == "behind"]
        if all(t.call == "ahead" for t in mine):
            outcome = "ISS-P best"
        elif behind:
            outcome = "ISS-P behind " + ", ".join(behind)
        else:
            outcome = "ISS-P tied with the best"
        outcomes.append("behind" if behind else outcome)
        statements.append(f"{cell.label}: {outcome} (rank {rank(results, cell)} of 4)")
    counts = {
        "ISS-P best": outcomes.count("ISS-P best"),
        "ISS-P behind a baseline": outcomes.count("behind"),
        "ISS-P tied with the best": outcomes.count("ISS-P tied with the best"),
    }
    verdict = "; ".join(f"{words} in {n}" for words, n in counts.items()) if outcomes else "pending"
    return ClaimRow(
        "C6",
        "ISS-P against the strongest sparse-training baselines",
        "ISS-P − each of IHT, GMP, RigL, Set5, Holm over all 24 comparisons",
        "; ".join(statements) or "-",
        verdict,
        _status(len(statements), len(CELLS)),
        [t.to_json() for t in tests],
    )


def claims_markdown(rows: Sequence[ClaimRow], runs: int, command: str) -> str:
    """The claims table: one row per claim, its test, figure, verdict and status."""
    lines = [
        "# Study v2: the paper's claims, each by its registered test",
        "",
        f"Made by `{command}` from {runs} run files in `analysis/study_runs/claims/`. The tests "
        "and decision rules are those of `analysis/claims-protocol.md`, committed before the "
        "first run; a cell is called only where ISS-P and the method it is compared with finished "
        f"all {len(SEEDS)} seeds. Intervals are 95% t-intervals over seeds; Holm-adjusted "
        f"p < {LEVEL} calls a cell.",
        "",
        "| claim | the paper says | test | figure | verdict | status |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (row.claim, row.words, row.test, row.figure, f"**{row.verdict}**", row.status)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


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
