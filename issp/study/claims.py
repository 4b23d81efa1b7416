"""Study v2's statistics for each of the paper's claims, by the tests registered before
its runs.

``analysis/claims-protocol.md`` fixed the cells, the seeds and, per claim, the statistic
and the rule that turns it into words. This module computes them from the study's run
files (the result dicts ``issp study`` writes: config, Set5/Set14 scores, mask dynamics
and gradient flow) and nothing else: there is no threshold here that the protocol does not
state. A comparison is made only where both methods finished every seed with a finite
figure (a diverged run leaves its cell uncalled and is named; the protocol's amendment of
2026-12-02). ``issp.study.claims_report`` turns them into the claims table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from issp import IsspError
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


def layer_spread(result: dict) -> float:
    """C5, reported: the mean SD across layers of log10 gradient norm (lower: more even)."""
    return result["gradient_flow"]["layer_spread"]


def loss_end(result: dict) -> float:
    """C5, reported: the training loss at the end of the pruning stage (trainability)."""
    return result["gradient_flow"]["loss_end_of_pruning"]


COMPARED: dict[str, Measure] = {
    "Set5": set5,
    "Set14": set14,
    "flips": log_flips,
    "gradient CV": grad_cv,
}


def by_seed(results: Sequence[dict], cell: Cell, method: str) -> dict[int, dict]:
    """The runs of ``method`` in ``cell``, by seed (dense, which runs once per architecture
    and scale, in every cell of them); IsspError for two runs of one seed, which a report
    must not choose between silently."""
    found = {}
    for result in results:
        config = result["config"]
        if (
            config["arch"] == cell.arch
            and config["scale"] == cell.scale
            and config["method"] == method
            and (method == "dense" or math.isclose(config["ratio"], cell.ratio))
        ):
            if config["seed"] in found:
                raise IsspError(f"two {method} runs of seed {config['seed']} in {cell.label}")
            found[config["seed"]] = result
    return found


def complete(
    results: Sequence[dict], cell: Cell, methods: Sequence[str], measure: Measure = set5
) -> bool:
    """Whether every method has finished every seed of the study in ``cell`` with a
    finite ``measure``."""
    for method in methods:
        runs = by_seed(results, cell, method)
        if not set(SEEDS) <= runs.keys():
            return False
        if not all(math.isfinite(measure(runs[seed])) for seed in SEEDS):
            return False
    return True


def diverged(results: Sequence[dict]) -> list[str]:
    """The finished sparse runs with a compared figure (Set5, Set14, flips, gradient CV) that
    is not finite, named by cell, method, seed and figure (amendment 1). Dense is in no
    test: its diverged runs show only as counts in the context table."""
    names = []
    for cell in CELLS:
        for method in SPARSE:
            for seed, result in sorted(by_seed(results, cell, method).items()):
                bad = [
                    name for name, measure in COMPARED.items() if not math.isfinite(measure(result))
                ]
                if bad:
                    names.append(f"{cell.label} {method} seed {seed} ({', '.join(bad)})")
    return names


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
        if complete(results, cell, ("issp", rival), measure)
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
    """A per-seed figure of C2 or C3 (one value per seed), with its 95% interval."""

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


def amplification(
    results: Sequence[dict], psnr: Measure = set5
) -> tuple[SeedTrend, SeedTrend] | None:
    """C2 on edsr-tiny: per seed, the least-squares slope of the ISS-P − IHT ``psnr`` gap
    against the ratio over the six cells (times ``RATIO_SPAN``), and the mean gap at x4
    minus at x2. None until all six cells are complete."""
    if not all(complete(results, cell, ("issp", "iht"), psnr) for cell in EDSR_CELLS):
        return None
    gaps = {cell: compare(results, cell, "issp", "iht", psnr).differences for cell in EDSR_CELLS}
    ratios = [cell.ratio for cell in EDSR_CELLS]
    slopes, scales = [], []
    for k in range(len(SEEDS)):
        per_cell = [gaps[cell][k] for cell in EDSR_CELLS]
        slopes.append(float(np.polyfit(ratios, per_cell, 1)[0]) * RATIO_SPAN)
        x4 = np.mean([gaps[c][k] for c in EDSR_CELLS if c.scale == 4])
        x2 = np.mean([gaps[c][k] for c in EDSR_CELLS if c.scale == 2])
        scales.append(float(x4 - x2))
    return SeedTrend(tuple(slopes)), SeedTrend(tuple(scales))


def seed_means(
    results: Sequence[dict], cells: Sequence[Cell], psnr: Measure = set5
) -> SeedTrend | None:
    """C3's reported figure: per seed, the ISS-P − IHT gap averaged over ``cells``; None
    until every one of them is complete."""
    if not cells or not all(complete(results, cell, ("issp", "iht"), psnr) for cell in cells):
        return None
    gaps = [compare(results, cell, "issp", "iht", psnr).differences for cell in cells]
    return SeedTrend(tuple(float(np.mean(per_seed)) for per_seed in zip(*gaps, strict=True)))


def ranks(results: Sequence[dict], cell: Cell, psnr: Measure = set5) -> dict[str, int]:
    """C6: each sparse method's place (1 = best) by mean ``psnr`` over seeds in ``cell``."""
    means = {m: np.mean([psnr(r) for r in by_seed(results, cell, m).values()]) for m in SPARSE}
    return {m: 1 + sum(means[o] > means[m] for o in SPARSE if o != m) for m in SPARSE}
