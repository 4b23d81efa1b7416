"""The study's statistics, computed from finished runs' results: ISS-P minus IHT paired by
seed with its 95% t-interval, p-value and verdict per (scale, ratio, metric), Holm's
correction across the cells of a test set, and the study's goals.

Pure functions of the result dicts ``issp.study.runner`` writes; the Markdown that shows
them is ``issp.study.report``'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from issp import IsspError
from issp.study.plan import STUDY_METHODS


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
        """Two-sided paired t-test of a zero mean difference (NaN with fewer than two).
        Identical differences are the t-test's limit: p 1 if all are zero, else 0."""
        if self.n < 2:
            return math.nan
        if np.ptp(self.differences) == 0:
            return 1.0 if self.differences[0] == 0 else 0.0
        return float(stats.ttest_1samp(self.differences, 0.0).pvalue)

    def to_json(self) -> dict:
        """The differences, their mean (None without any) and 95% interval (None with
        fewer than two)."""
        low, high = self.interval
        return {
            "differences": list(self.differences),
            "mean": self.mean if self.n else None,
            "interval95": [low, high] if self.n >= 2 else None,
        }

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


@dataclass(frozen=True)
class SummaryRow:
    """One (scale, ratio, metric) of the study: each method's score per finished seed, and
    ISS-P minus IHT paired by seed with the verdict the study gives it."""

    scale: int
    ratio: float
    metric: str
    scores: dict[str, tuple[float, ...]]  # by method in STUDY_METHODS; dense is ratio 0
    differences: tuple[float, ...]  # ISS-P minus IHT, one per seed that finished both
    mean_difference: float | None  # None while no seed has both
    interval95: tuple[float, float] | None  # None with fewer than two paired seeds
    issp_wins: int
    seeds: int
    verdict: str
    p: float | None = None  # the paired t-test's; None with fewer than two paired seeds
    p_holm: float | None = None  # Holm-adjusted across the metric's cells with a p

    def to_json(self) -> dict:
        """The row as ``study.json`` keeps it."""
        row = {
            "scale": self.scale,
            "ratio": self.ratio,
            "metric": self.metric,
            "dense": list(self.scores["dense"]),
            "issp": list(self.scores["issp"]),
            "iht": list(self.scores["iht"]),
            "differences": list(self.differences),
            "mean_difference": self.mean_difference,
            "interval95": None if self.interval95 is None else list(self.interval95),
            "issp_wins": self.issp_wins,
            "seeds": self.seeds,
            "verdict": self.verdict,
            "p": self.p,
        }
        return row if self.p_holm is None else row | {"p_holm": self.p_holm}

    @classmethod
    def from_json(cls, data: object) -> SummaryRow:
        """The row a ``study.json`` summary entry describes; IsspError saying what is wrong
        with it."""
        if not isinstance(data, dict):
            raise IsspError("is not an object")
        mean, interval = data.get("mean_difference"), data.get("interval95")
        if not (
            _is_int(data.get("scale"))
            and _is_number(data.get("ratio"))
            and isinstance(data.get("metric"), str)
            and (mean is None or _is_number(mean))
            and (interval is None or (_numbers(interval) and len(interval) == 2))
            and _is_int(data.get("issp_wins"))
            and _is_int(data.get("seeds"))
            and isinstance(data.get("verdict"), str)
        ):
            raise IsspError(
                "lacks one of scale, ratio, metric, mean_difference, interval95, "
                "issp_wins, seeds, verdict, or has one of another type"
            )
        for method in STUDY_METHODS:
            if not _numbers(data.get(method)):
                raise IsspError(f"has no list of {method} scores")
        if not _numbers(data.get("differences")):
            raise IsspError("has no list of paired differences")
        p, p_holm = data.get("p"), data.get("p_holm")
        if not all(value is None or _is_number(value) for value in (p, p_holm)):
            raise IsspError("has a p or p_holm that is not a number")
        return cls(
            scale=data["scale"],
            ratio=float(data["ratio"]),
            metric=data["metric"],
            scores={method: tuple(map(float, data[method])) for method in STUDY_METHODS},
            differences=tuple(map(float, data["differences"])),
            mean_difference=None if mean is None else float(mean),
            interval95=None if interval is None else (float(interval[0]), float(interval[1])),
            issp_wins=data["issp_wins"],
            seeds=data["seeds"],
            verdict=data["verdict"],
            p=None if p is None else float(p),
            p_holm=None if p_holm is None else float(p_holm),
        )


def _is_number(value: object) -> bool:
    # JSON true/false arrive as bool, which Python counts as int.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: object) -> bool:
    return isinstance(value, list) and all(_is_number(x) for x in value)


def study_summary(results: Sequence[dict], metrics: Sequence[str]) -> dict[str, SummaryRow]:
    """Per scale, ratio and metric (keyed ``x2 r0.9 set5``): each method's scores and the
    paired ISS-P minus IHT."""
    summary = {}
    for scale in sorted({r["config"]["scale"] for r in results}):
        ratios = sorted({r["config"]["ratio"] for r in results if r["config"]["scale"] == scale})
        for ratio in [r for r in ratios if r > 0]:
            for metric in metrics:
                summary[f"x{scale} r{ratio:g} {metric}"] = _summary_row(
                    results, scale, ratio, metric
                )
    for metric in metrics:
        keys = [key for key, row in summary.items() if row.metric == metric and row.p is not None]
        adjusted = holm([summary[key].p for key in keys])
        for key, p_holm in zip(keys, adjusted, strict=True):
            summary[key] = dataclasses.replace(summary[key], p_holm=p_holm)
    return summary


def _summary_row(results: Sequence[dict], scale: int, ratio: float, metric: str) -> SummaryRow:
    pair = issp_minus_iht(results, scale, ratio, metric)
    # Dense trains once per scale, at ratio 0: the reference of every ratio's row.
    ratios = {method: 0.0 if method == "dense" else ratio for method in STUDY_METHODS}
    return SummaryRow(
        scale=scale,
        ratio=ratio,
        metric=metric,
        scores={m: tuple(_scores(results, scale, m, ratios[m], metric)) for m in STUDY_METHODS},
        differences=pair.differences,
        mean_difference=pair.mean if pair.n else None,
        interval95=pair.interval if pair.n >= 2 else None,
        issp_wins=pair.wins,
        seeds=pair.n,
        verdict=pair.verdict,
        p=None if math.isnan(pair.p_value) else pair.p_value,
    )


def summary_json(summary: dict[str, SummaryRow]) -> dict[str, dict]:
    """``study_summary``'s rows as ``study.json`` keeps them."""
    return {key: row.to_json() for key, row in summary.items()}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error across them), in
    their order: the k-th smallest is multiplied by (m - k + 1), kept monotone, capped at 1.
    IsspError for a NaN, which has no rank and would silently push every later p to 1."""
    if any(math.isnan(p) for p in p_values):
        raise IsspError("Holm's adjustment got a NaN p-value: leave its comparison out")
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def holm_survivors(
    summary: dict[str, SummaryRow], metric: str, level: float = 0.05
) -> list[SummaryRow]:
    """The rows of ``metric`` whose Holm-adjusted p is below ``level``."""
    return [
        row
        for row in summary.values()
        if row.metric == metric and row.p_holm is not None and row.p_holm < level
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
