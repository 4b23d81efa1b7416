"""The study's statistics, computed from finished runs' results: ISS-P minus IHT paired by
seed with its 95% t-interval, p-value and verdict per (scale, ratio, metric), Holm's
correction across the cells of a test set, and the study's goals.

Pure functions of the result dicts ``issp.study.runner`` writes; the Markdown that shows
them is ``issp.study.report``'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedDifferences:
    """One arm minus another, one difference per seed (ISS-P minus IHT at one scale, ratio
    and metric, in the study): the mean, its 95% t-interval, the p-value and the verdict."""

    differences: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return float(np.mean(self.differences))

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% t-interval of the mean difference (NaN with fewer than two seeds)."""
        if self.n < 2:
            return math.nan, math.nan
        half = stats.t.ppf(0.975, self.n - 1) * np.std(self.differences, ddof=1) / self.n**0.5
        return self.mean - half, self.mean + half

    @property
    def p_value(self) -> float:
        """Two-sided paired t-test of a zero mean difference (NaN with fewer than two)."""
        if self.n < 2:
            return math.nan
        return float(stats.ttest_1samp(self.differences, 0.0).pvalue)

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.differences)

    @property
    def verdict(self) -> str:
        low, high = self.interval
        if low > 0:
            return "ISS-P ahead"
        if high < 0:
            return "ISS-P behind"
        return "tie" if self.n >= 2 else "too few seeds"


def issp_minus_iht(
    results: Sequence[dict], scale: int, ratio: float, metric: str
) -> PairedDifferences:
    """ISS-P minus IHT per seed where both finished; ``metric`` is e.g. ``set5``."""
    return differences_by_seed(results, scale, metric, ("issp", ratio), ("iht", ratio))


def differences_by_seed(
    results: Sequence[dict],
    scale: int,
    metric: str,
    first: tuple[str, float],
    second: tuple[str, float],
) -> PairedDifferences:
    """``first`` minus ``second`` (each a method and ratio) on ``metric``, per seed where
    both finished and were scored on it, in seed order."""
    by_seed: dict[int, dict[tuple[str, float], float]] = {}
    for result in results:
        config = result["config"]
        if config["scale"] != scale or (metric != "val" and metric not in result):
            continue
        for run in (first, second):
            if config["method"] == run[0] and math.isclose(config["ratio"], run[1]):
                score = result["val_psnr"] if metric == "val" else result[metric]["psnr"]
                by_seed.setdefault(config["seed"], {})[run] = score
    return PairedDifferences(
        tuple(
            scores[first] - scores[second]
            for _, scores in sorted(by_seed.items())
            if {first, second} <= scores.keys()
        )
    )


def mean_sd(values: Sequence[float], form: str = ".3f") -> str:
    """Mean ± sample SD over seeds in ``form``; one value alone, "-" for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{form}}"
    return f"{np.mean(values):{form}} ± {np.std(values, ddof=1):{form}}"


def _scores(results: Sequence[dict], scale: int, method: str, ratio: float, key: str) -> list:
    return [
        r["val_psnr"] if key == "val" else r[key]["psnr"]
        for r in results
        if r["config"]["scale"] == scale
        and r["config"]["method"] == method
        and math.isclose(r["config"]["ratio"], ratio)
        and (key == "val" or key in r)
    ]


def study_summary(results: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Per scale, ratio and metric: each method's scores and the paired ISS-P minus IHT."""
    summary = {}
    for scale in sorted({r["config"]["scale"] for r in results}):
        ratios = sorted({r["config"]["ratio"] for r in results if r["config"]["scale"] == scale})
        for ratio in [r for r in ratios if r > 0]:
            for metric in metrics:
                pair = issp_minus_iht(results, scale, ratio, metric)
                low, high = pair.interval
                summary[f"x{scale} r{ratio:g} {metric}"] = {
                    "scale": scale,
                    "ratio": ratio,
                    "metric": metric,
                    "dense": _scores(results, scale, "dense", 0.0, metric),
                    "issp": _scores(results, scale, "issp", ratio, metric),
                    "iht": _scores(results, scale, "iht", ratio, metric),
                    "differences": list(pair.differences),
                    "mean_difference": pair.mean if pair.n else None,
                    "interval95": [low, high] if pair.n >= 2 else None,
                    "issp_wins": pair.wins,
                    "seeds": pair.n,
                    "verdict": pair.verdict,
                    "p": None if math.isnan(pair.p_value) else pair.p_value,
                }
    for metric in metrics:
        rows = [row for row in summary.values() if row["metric"] == metric and row["p"] is not None]
        for row, adjusted in zip(rows, holm([row["p"] for row in rows]), strict=True):
            row["p_holm"] = adjusted
    return summary


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error across them), in
    their order: the k-th smallest is multiplied by (m - k + 1), kept monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_survivors(summary: dict, metric: str, level: float = 0.05) -> list[dict]:
    """The rows of ``metric`` whose Holm-adjusted p is below ``level``."""
    return [
        row
        for row in summary.values()
        if row["metric"] == metric and row.get("p_holm") is not None and row["p_holm"] < level
    ]


@dataclass(frozen=True)
class Goal:
    """One of the study's targets, checked on Set5 means over ``seeds`` seeds: met when
    ``figure`` (dB) is at least ``at_least``; ``figure`` is None until its runs finish."""

    text: str
    figure: float | None
    at_least: float
    seeds: int

    @property
    def met(self) -> bool | None:
        return None if self.figure is None else self.figure >= self.at_least


def study_goals(results: Sequence[dict]) -> list[Goal]:
    """The study's goals: ISS-P's mean paired difference >= 0 at 0.95 and 0.99 on both
    scales, ISS-P at 0.9 within 0.5 dB of dense (paired by seed too), dense x2 >= 36.8
    and x4 >= 30.3 dB."""
    goals = []
    for scale in (2, 4):
        for ratio in (0.95, 0.99):
            pair = issp_minus_iht(results, scale, ratio, "set5")
            figure = pair.mean if pair.n else None
            text = f"x{scale} r{ratio:g}: ISS-P − IHT, mean paired"
            goals.append(Goal(text, figure, 0.0, pair.n))
    for scale in (2, 4):
        gap = differences_by_seed(results, scale, "set5", ("issp", 0.9), ("dense", 0.0))
        figure = gap.mean if gap.n else None
        goals.append(Goal(f"x{scale} r0.9: ISS-P − dense, mean paired", figure, -0.5, gap.n))
    for scale, target in ((2, 36.8), (4, 30.3)):
        dense = _scores(results, scale, "dense", 0.0, "set5")
        figure = float(np.mean(dense)) if dense else None
        goals.append(Goal(f"x{scale} dense Set5 PSNR, mean", figure, target, len(dense)))
    return goals
