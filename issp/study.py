"""The paired-seed study of ISS-P against IHT, and the validation grid that sets its alpha
and learning rate.

A run is one ``TrainConfig``. For each seed, every method starts from the same
initialisation (the model is built right after ``torch.manual_seed(seed)``) and sees the
same batches (they are a pure function of seed and step), so ISS-P minus IHT at one seed
is a paired difference: the only thing that differs between the two runs is the pruning
rule. Runs execute two at a time (one torch thread each), each claims a lock so that
several ``study run`` processes split the plan, and a killed run resumes from its state.
Each finished run leaves ``<name>.json`` with its scores; the report reads only those.
The zoo's edsr-tiny checkpoints are the study's seed-0 runs (``seed_run``): ``zoo build``
copies those already finished here instead of training them again.

    python -m issp study grid --data ../shared/data/train     # alpha and lr, validation only
    python -m issp study run --data ../shared/data/train --test ../shared/data/test
    python -m issp study report                               # analysis/study.md and .json
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from scipy import stats

from issp.catalogue import ROOT, TEST_SETS, score_key
from issp.checkpoint import load_checkpoint
from issp.evaluate import evaluate_arrays, evaluate_folder, validation_crops
from issp.machine import available_cpus, machine_description
from issp.methods import COMPARED, label
from issp.report import DOCS, mask_dynamics, write_doc_section
from issp.train import (
    DEFAULT_PROTOCOL,
    PRECISIONS,
    TrainConfig,
    state_path,
    telemetry_path,
    train,
    training_images,
)

WORK_DIR = ROOT / "runs" / "study"
REPORT_DIR = ROOT / "analysis"  # study.md/.json, protocol_grid.md/.json
STUDY_JSON = "study.json"  # the study's figures, in ``out`` (REPORT_DIR by default)
# What ``study run`` trains unless told otherwise. The zoo's edsr-tiny checkpoints are the
# study's seed-0 runs (``seed_run``), so these are the zoo's settings too.
ARCH = "edsr-tiny"
PROTOCOL = DEFAULT_PROTOCOL
RATIOS = (0.9, 0.95, 0.99)
SEEDS = (0, 1, 2)
STEPS = {2: 3000, 4: 3000}  # per scale: the first zoo's length; about 21 CPU-hours in all
# A key of issp.train.PRECISIONS: the arithmetic seeds 0-4 were registered in. A new study
# may take channels-last, or bf16 if analysis/precision.md adopts it (docs/study.md).
PRECISION = "fp32"
# The zoo's batches: 16 patches of 48 px LR at x2, 24 px at x4 (the same HR-side 96 px).
PATCH = {2: 48, 3: 32, 4: 24}


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study or the grid: a name and the config it trains."""

    name: str
    config: TrainConfig

    def result_path(self, results: Path) -> Path:
        return results / f"{self.name}.json"

    def checkpoint_path(self, work: Path) -> Path:
        return work / f"{self.name}.safetensors"


@dataclass(frozen=True)
class RunFolders:
    """Where one plan's runs lie: checkpoints and training states in ``work``, each
    finished run's ``<name>.json`` in ``results`` (kept beside the reports, committed)."""

    work: Path
    results: Path

    @classmethod
    def of(cls, plan: str, work: Path = WORK_DIR, out: Path = REPORT_DIR) -> RunFolders:
        """The folders of ``plan``: a protocol's study (``two-stage``) or ``grid``."""
        return cls(work / plan, out / "study_runs" / plan)

    def finished_checkpoint(self, run: StudyRun) -> Path | None:
        """``run``'s checkpoint if the run has finished (its result written), else None."""
        checkpoint = run.checkpoint_path(self.work)
        done = run.result_path(self.results).is_file() and checkpoint.is_file()
        return checkpoint if done else None


def run_name(config: TrainConfig) -> str:
    """``edsr-tiny_x2_issp_r0.95_a0.95_lr0.0001_s0``: everything a study varies (with
    ``_nm19-20`` for an N:M selection, ``_edges-dense`` where the first and last conv are
    left dense, ``_cl`` for fp32 with channels-last, ``_bf16`` for bfloat16 autocast with
    channels-last)."""
    if config.method == "dense":
        what = "dense"
    elif config.method == "issp":
        what = f"issp_r{config.ratio:g}_a{config.alpha:g}"
    else:
        what = f"{config.method}_r{config.ratio:g}"
    if config.pattern is not None:
        what += "_nm" + config.pattern.replace(":", "-")
    edges = "" if config.prune_edges or config.method == "dense" else "_edges-dense"
    precision = {"fp32": "", "channels-last": "_cl", "bf16": "_bf16"}[config.precision]
    return f"{config.arch}_x{config.scale}_{what}_lr{config.lr:g}{edges}{precision}_s{config.seed}"


def study_plan(
    protocol: str,
    steps: dict[int, int],
    data: str | None,
    scales: Sequence[int] = (2, 4),
    ratios: Sequence[float] = RATIOS,
    seeds: Sequence[int] = SEEDS,
    methods: Sequence[str] = (*COMPARED, "dense"),
    precision: str = PRECISION,
    lr: float | None = None,
    alpha: float | None = None,
) -> list[StudyRun]:
    """Every run of the study, seed-major so that whole pairs finish early. ``lr`` and
    ``alpha`` default to the protocol's."""
    chosen = {"lr": lr, "alpha": alpha}
    runs = []
    for seed in seeds:
        for scale in scales:
            base = TrainConfig.of_protocol(
                protocol,
                arch=ARCH,
                scale=scale,
                steps=steps[scale],
                patch=PATCH[scale],
                seed=seed,
                data=data,
                workers=0,
                **PRECISIONS[precision],
                val_every=steps[scale],
                **{key: value for key, value in chosen.items() if value is not None},
            )
            for method in methods:
                for ratio in [0.0] if method == "dense" else ratios:
                    config = dataclasses.replace(base, method=method, ratio=ratio)
                    runs.append(StudyRun(run_name(config), config))
    return runs


def default_plan(data: str | None) -> list[StudyRun]:
    """The runs ``study run`` trains when given no options but ``--data``."""
    return study_plan(PROTOCOL, STEPS, data, tuple(STEPS), RATIOS, SEEDS, precision=PRECISION)


def seed_run(scale: int, method: str, ratio: float, data: str | None, seed: int = 0) -> StudyRun:
    """The run ``study run`` trains by default for one (scale, method, ratio, seed); a
    ratio the study does not run (0.5, say) gets the config it would have."""
    scales, ratios, seeds, methods = (scale,), (ratio,), (seed,), (method,)
    [run] = study_plan(PROTOCOL, STEPS, data, scales, ratios, seeds, methods, precision=PRECISION)
    return run


def grid_plan(
    protocol: str,
    steps: int,
    data: str | None,
    lrs: Sequence[float],
    alphas: Sequence[float],
    ratios: Sequence[float] = RATIOS,
    seeds: Sequence[int] = SEEDS,
    precision: str = PRECISION,
    prune_edges: bool = True,
) -> list[StudyRun]:
    """edsr-tiny x2 runs of IHT at each learning rate and ISS-P at each (alpha, rate)."""
    runs = []
    for seed in seeds:
        for ratio in ratios:
            for lr in lrs:
                base = TrainConfig.of_protocol(
                    protocol,
                    ratio=ratio,
                    lr=lr,
                    steps=steps,
                    seed=seed,
                    data=data,
                    workers=0,
                    **PRECISIONS[precision],
                    val_every=steps,
                    prune_edges=prune_edges,
                )
                configs = [dataclasses.replace(base, method="iht")]
                configs += [dataclasses.replace(base, method="issp", alpha=a) for a in alphas]
                runs += [StudyRun(run_name(c), c) for c in configs]
    return runs


def test_folders(test: Path | None, extra: Sequence[Path] = ()) -> dict[str, Path]:
    """Evaluation folders by result key: Set5 and Set14 under ``test``, then ``extra``."""
    folders = {score_key(name): test / name for name in TEST_SETS} if test is not None else {}
    return folders | {score_key(Path(folder).name): Path(folder) for folder in extra}


def execute(
    runs: Sequence[StudyRun],
    folders: RunFolders,
    tests: dict[str, Path],
    jobs: int = 2,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> list[dict]:
    """Train and score every run without a result yet, ``jobs`` at a time with ``threads``
    torch threads each (default: the usable cores split between the jobs); return all
    results (those finished by other processes included)."""
    folders.work.mkdir(parents=True, exist_ok=True)
    folders.results.mkdir(parents=True, exist_ok=True)
    pending = [run for run in runs if not run.result_path(folders.results).exists()]
    log(f"[{time.strftime('%H:%M:%S')}] {len(runs) - len(pending)} of {len(runs)} runs done")
    threads = threads or max(1, available_cpus() // jobs)
    with ProcessPoolExecutor(jobs) as pool:
        futures = {pool.submit(_execute_one, run, folders, tests, threads): run for run in pending}
        # As they finish, not in plan order: a short x4 run is logged while an x2 one trains.
        for done, future in enumerate(as_completed(futures), start=1):
            message = future.result()
            count = f"{len(runs) - len(pending) + done} of {len(runs)}"
            log(f"[{time.strftime('%H:%M:%S')}] ({count}) {futures[future].name}: {message}")
    return load_results(runs, folders.results)


def _execute_one(run: StudyRun, folders: RunFolders, tests: dict[str, Path], threads: int) -> str:
    torch.set_num_threads(threads)
    out, results = run.checkpoint_path(folders.work), folders.results
    try:
        with FileLock(folders.work / f"{run.name}.lock", timeout=0):
            if run.result_path(results).exists():
                return "done by another process"
            history = train(run.config, out, resume=True, progress=False)
            model, meta = load_checkpoint(out)
            result = {
                "name": run.name,
                "config": _plain(dataclasses.asdict(run.config)),
                "val_psnr": history["val_psnr"][-1],
                "train_seconds": float(meta["train_seconds"]),
                "device": meta["device"],
                "machine": machine_description(),  # the CPU: bf16 speed and sums depend on it
            }
            for key, folder in tests.items():
                scores = evaluate_folder(model, folder, run.config.scale)
                result[key] = scores  # with per-image rows, for re-analysis
            if run.config.method in COMPARED and telemetry_path(out).is_file():
                dynamics = mask_dynamics(telemetry_path(out), run.config.kp)
                result["dynamics"] = dataclasses.asdict(dynamics)
            # The checkpoint is kept beside its scores (compact sparse storage, about 200
            # KB), so a later analysis can re-score it on any images (``study rescore``).
            shutil.copyfile(out, run.checkpoint_path(results))
            tmp = run.result_path(results).with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, run.result_path(results))
            state_path(out).unlink(missing_ok=True)
            scores = ", ".join(f"{k} {result[k]['psnr']:.3f}" for k in tests)
            return f"val {result['val_psnr']:.3f} dB" + (f", {scores}" if scores else "")
    except Timeout:
        return "skipped: another process is training it"


def _plain(settings: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def load_results(runs: Sequence[StudyRun], results: Path) -> list[dict]:
    """The results of ``runs`` that have finished, in plan order."""
    paths = [run.result_path(results) for run in runs]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


@dataclass(frozen=True)
class Paired:
    """ISS-P minus IHT over seeds at one (scale, ratio, metric): the study's statistic."""

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


def paired(results: Sequence[dict], scale: int, ratio: float, metric: str) -> Paired:
    """ISS-P minus IHT per seed where both finished; ``metric`` is e.g. ``set5``."""
    return paired_runs(results, scale, metric, ("issp", ratio), ("iht", ratio))


def paired_runs(
    results: Sequence[dict],
    scale: int,
    metric: str,
    first: tuple[str, float],
    second: tuple[str, float],
) -> Paired:
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
    return Paired(
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
                pair = paired(results, scale, ratio, metric)
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
            pair = paired(results, scale, ratio, "set5")
            figure = pair.mean if pair.n else None
            text = f"x{scale} r{ratio:g}: ISS-P − IHT, mean paired"
            goals.append(Goal(text, figure, 0.0, pair.n))
    for scale in (2, 4):
        gap = paired_runs(results, scale, "set5", ("issp", 0.9), ("dense", 0.0))
        figure = gap.mean if gap.n else None
        goals.append(Goal(f"x{scale} r0.9: ISS-P − dense, mean paired", figure, -0.5, gap.n))
    for scale, target in ((2, 36.8), (4, 30.3)):
        dense = _scores(results, scale, "dense", 0.0, "set5")
        figure = float(np.mean(dense)) if dense else None
        goals.append(Goal(f"x{scale} dense Set5 PSNR, mean", figure, target, len(dense)))
    return goals


def summary_cells(row: dict) -> str:
    """A ``study_summary`` row's table cells from dense on: each method's scores, ISS-P
    minus IHT with its interval, the wins, the verdict and the p-values."""
    interval, mean = row["interval95"], row["mean_difference"]
    p = "-" if row.get("p") is None else f"{row['p']:.3f} ({row['p_holm']:.3f})"
    return (
        f"| {mean_sd(row['dense'])} | {mean_sd(row['iht'])} | {mean_sd(row['issp'])} "
        f"| {'-' if mean is None else f'{mean:+.3f}'} "
        f"| {'-' if interval is None else f'[{interval[0]:+.3f}, {interval[1]:+.3f}]'} "
        f"| {row['issp_wins']} of {row['seeds']} | {row['verdict']} | {p} |"
    )


def holm_sentences(summary: dict, metrics: Sequence[str]) -> list[str]:
    """Per test set, in words: which cells keep their verdict after Holm's correction."""
    lines = []
    for metric in (m for m in metrics if m != "val"):
        family = [row for row in summary.values() if row["metric"] == metric and "p_holm" in row]
        if not family:
            continue
        kept = [
            f"x{row['scale']} {row['ratio']:g} ({row['verdict']}, adjusted p {row['p_holm']:.3f})"
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


def verdict_sentence(
    scale: int,
    ratio: float,
    verdict: str,
    mean: float | None,
    interval: tuple[float, float] | None,
    wins: int,
    seeds: int,
) -> str:
    """One (scale, ratio) of the study in words, as docs/study.md and the Results tab say it:
    the verdict, the mean paired difference, its 95% interval and the wins."""
    head = f"x{scale}, ratio {ratio:g}: **{verdict}**"
    issp, iht = label("issp"), label("iht")
    if mean is None:
        return f"{head} — no seed has finished both {issp} and {iht} yet."
    if interval is None:
        within = "the 95% interval needs at least two seeds"
    else:
        within = f"95% interval {_signed(interval[0])} to {_signed(interval[1])}"
    return (
        f"{head} — {issp} minus {iht} {_signed(mean)} dB ({within}), "
        f"{issp} won {wins} of {seed_count(seeds)}."
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
        for row in (row for row in summary.values() if row["metric"] == metric):
            interval = row["interval95"]
            sentence = verdict_sentence(
                row["scale"],
                row["ratio"],
                row["verdict"],
                row["mean_difference"],
                None if interval is None else tuple(interval),
                row["issp_wins"],
                row["seeds"],
            )
            lines.append(f"- {sentence}")
        lines += ["", *holm_sentences(summary, [metric]), ""]
    return "\n".join([*lines, *_goals_table(study_goals(results))]) + "\n"


def _dynamics(by_seed: dict[int, dict[str, dict]], method: str, key: str) -> str:
    """``key`` of ``method``'s dynamics as a count, mean ± sd over seeds."""
    return mean_sd([runs[method][key] for runs in by_seed.values() if method in runs], ",.0f")


def flips_markdown(results: Sequence[dict]) -> list[str]:
    """The paper's second claim, paired by seed like the PSNR: mask flips during the
    pruning stage (``issp.report.MaskDynamics``) of ISS-P and IHT per scale and ratio."""
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
        cells = f"| x{row['scale']} | {row['ratio']:g} | {metric_label(row['metric'])} "
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.md").write_text(text)
    data = {
        "command": command,
        "planned_runs": planned,
        "summary": study_summary(results, metrics),
        "goals": [dataclasses.asdict(goal) | {"met": goal.met} for goal in study_goals(results)],
        "runs": list(results),
    }
    (out / STUDY_JSON).write_text(json.dumps(data, indent=1, default=_json_number) + "\n")
    if out.resolve() == REPORT_DIR.resolve():  # the checkout's report: docs/study.md says it
        verdict = verdict_markdown(results, metrics, command, planned)
        write_doc_section(DOCS / "study.md", "study-verdict", verdict)
    return text


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


@dataclass(frozen=True)
class GridChoice:
    """What the validation grid chose, and the scores it chose by."""

    lr: float
    prune_edges: bool
    alpha: float
    reference_alpha: float
    lr_scores: dict[str, float]  # per rate: mean of IHT's and ISS-P's mean validation PSNR
    lr_runs: dict[str, int]  # per rate: its IHT runs with every conv pruned (seeds x ratios)
    edge_scores: dict[str, float]  # the same, first and last conv pruned or left dense
    table: dict[str, dict]  # per grid setting: mean validation PSNR and number of runs


def choose_protocol(results: Sequence[dict], reference_alpha: float) -> GridChoice:
    """The grid's choice, on validation PSNR only, one setting at a time:

    1. the learning rate: the best mean of IHT's and ISS-P's (at ``reference_alpha``)
       mean validation PSNR with every conv pruned, so it is not picked for ISS-P alone;
    2. at that rate, whether the first and last conv are pruned, by the same score;
    3. at both, ISS-P's best alpha.
    """
    val: dict[tuple[str, float, float | None, bool], list[float]] = {}
    for r in results:
        c = r["config"]
        key = (
            c["method"],
            c["lr"],
            c["alpha"] if c["method"] == "issp" else None,
            c["prune_edges"],
        )
        val.setdefault(key, []).append(r["val_psnr"])

    def score(lr: float, edges: bool) -> float:
        pair = (val[("iht", lr, None, edges)], val[("issp", lr, reference_alpha, edges)])
        return float(np.mean(pair[0]) + np.mean(pair[1])) / 2

    lrs = sorted({lr for _, lr, _, edges in val if edges})
    lr_scores = {f"{x:g}": score(x, True) for x in lrs}
    # Rates screened out after the first seed have fewer runs; a mean over one seed is not
    # comparable with a mean over three, so the choice is among the rates run at every seed.
    runs = {x: len(val[("iht", x, None, True)]) for x in lrs}
    lr = max((x for x in lrs if runs[x] == max(runs.values())), key=lambda x: score(x, True))
    lr_runs = {f"{x:g}": n for x, n in runs.items()}
    edge_options = sorted({e for m, x, _, e in val if m == "iht" and x == lr})
    edge_scores = {("pruned" if e else "dense"): score(lr, e) for e in edge_options}
    edges = max(edge_options, key=lambda e: score(lr, e))
    alphas = sorted(a for m, x, a, e in val if m == "issp" and x == lr and e == edges)
    alpha = max(alphas, key=lambda a: np.mean(val[("issp", lr, a, edges)]))
    table = {}
    for m, x, a, e in sorted(val, key=lambda k: (k[1], not k[3], k[0], k[2] or 0)):
        what = "IHT" if m == "iht" else f"ISS-P alpha {a:g}"
        table[f"{what}, lr {x:g}, first/last conv {'pruned' if e else 'dense'}"] = {
            "mean_val_psnr": float(np.mean(val[m, x, a, e])),
            "runs": len(val[m, x, a, e]),
        }
    return GridChoice(lr, edges, alpha, reference_alpha, lr_scores, lr_runs, edge_scores, table)


def promising_lrs(results: Sequence[dict], reference_alpha: float, within: float) -> list[float]:
    """The learning rates worth running at more seeds: those whose score (the mean of
    IHT's and ISS-P's mean validation PSNR, every conv pruned) is within ``within`` dB of
    the best. A rate 2-3 dB behind after one seed is far outside seed-to-seed spread
    (about 0.2 dB), so further seeds there would only spend CPU-hours."""
    choice = choose_protocol(results, reference_alpha)
    best = max(choice.lr_scores.values())
    return [float(lr) for lr, score in choice.lr_scores.items() if score >= best - within]


def bicubic_validation(data: str | None, seeds: Sequence[int], scale: int = 2) -> float:
    """Bicubic's validation PSNR, averaged over the seeds' validation splits: the floor
    every grid score should clear."""
    scores = []
    for seed in seeds:
        config = TrainConfig(data=data, seed=seed, scale=scale)
        crops = validation_crops(training_images(config)[1], scale)
        scores.append(evaluate_arrays(None, crops, scale)["psnr"])
    return float(np.mean(scores))


def grid_markdown(
    results: Sequence[dict], command: str, reference_alpha: float, bicubic: float
) -> str:
    """``analysis/protocol_grid.md``: the validation grid and what it chose."""
    choice = choose_protocol(results, reference_alpha)
    configs = [r["config"] for r in results]
    lines = [
        "# Learning rate, pruned layers and alpha for the two-stage protocol (validation only)",
        "",
        f"Made by `{command}` on {', '.join(sorted({r['device'] for r in results}))}, "
        f"{time.strftime('%Y-%m-%d')}. edsr-tiny x2, {configs[0]['steps']} steps, "
        f"ratios {', '.join(f'{x:g}' for x in sorted({c['ratio'] for c in configs}))}, "
        f"seeds {', '.join(str(x) for x in sorted({c['seed'] for c in configs}))}. "
        "Scored on the validation images carved out of the training folder (never "
        "Set5/Set14). One setting at a time: (1) IHT and ISS-P at alpha "
        f"{reference_alpha:g} (the authors' shrink factor) at every learning rate, every conv "
        "pruned as in the authors' code; the rate with the best mean of the two methods' mean "
        "validation PSNR is chosen (so it is not picked for ISS-P alone). (2) At that rate, "
        "the same two with the first and last conv left dense; the better of the two by the "
        "same score is chosen. (3) ISS-P at the other alphas with both settings fixed; its "
        "best alpha is chosen.",
    ]
    runs = choice.lr_runs
    screened = [lr for lr, n in runs.items() if n < max(runs.values())]
    if screened:
        lines[-1] += (
            f" Rates {', '.join(screened)} ran at the first seed only: they were further "
            "behind the best rate than the screen (`--screen`, successive halving), and the "
            "choice is among the rates run at every seed."
        )
    lines += [
        "",
        "| run | mean validation PSNR (dB) | runs |",
        "|---|---|---|",
        f"| bicubic (reference) | {bicubic:.3f} | |",
    ]
    lines += [
        f"| {name} | {row['mean_val_psnr']:.3f} | {row['runs']} |"
        for name, row in choice.table.items()
    ]
    lines += [
        "",
        "Per learning rate, mean of the two methods' means: "
        + ", ".join(f"{lr}: {score:.3f} dB" for lr, score in choice.lr_scores.items())
        + ". First and last conv at that rate: "
        + ", ".join(f"{what}: {score:.3f} dB" for what, score in choice.edge_scores.items())
        + ".",
        "",
        f"**Chosen: lr {choice.lr:g}, first and last conv "
        f"{'pruned' if choice.prune_edges else 'dense'}, alpha {choice.alpha:g}.**",
        "",
        *_grid_noise_markdown(results, choice),
    ]
    return "\n".join(lines) + "\n"


def _grid_noise_markdown(results: Sequence[dict], choice: GridChoice) -> list[str]:
    """The paired ISS-P minus IHT at the chosen settings: its seed-to-seed spread is what
    sets the width of the study's intervals."""
    chosen = [
        r
        for r in results
        if math.isclose(r["config"]["lr"], choice.lr)
        and r["config"]["prune_edges"] == choice.prune_edges
        and (r["config"]["method"] != "issp" or math.isclose(r["config"]["alpha"], choice.alpha))
    ]
    lines = [
        "Seed noise at the chosen settings: ISS-P minus IHT on validation, paired by seed. "
        "The spread of these differences, not their mean, is the finding here: it says how "
        "wide the study's 95% interval will be with this many seeds (at these short runs).",
        "",
        "| ratio | differences (dB) | mean | SD | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for ratio in sorted({r["config"]["ratio"] for r in chosen}):
        pair = paired(chosen, 2, ratio, "val")
        if pair.n < 2:
            continue
        low, high = pair.interval
        spread = np.std(pair.differences, ddof=1)
        lines.append(
            f"| {ratio:g} | {', '.join(f'{d:+.3f}' for d in pair.differences)} "
            f"| {pair.mean:+.3f} | {spread:.3f} | [{low:+.3f}, {high:+.3f}] |"
        )
    return lines


def write_grid(
    results: Sequence[dict],
    command: str,
    reference_alpha: float,
    bicubic: float,
    out: Path = REPORT_DIR,
) -> GridChoice:
    """Write ``protocol_grid.md`` and ``protocol_grid.json`` into ``out``; return the choice."""
    out.mkdir(parents=True, exist_ok=True)
    text = grid_markdown(results, command, reference_alpha, bicubic)
    (out / "protocol_grid.md").write_text(text)
    choice = choose_protocol(results, reference_alpha)
    data = {
        "command": command,
        "choice": dataclasses.asdict(choice),
        "bicubic_val_psnr": bicubic,
        "runs": list(results),
    }
    (out / "protocol_grid.json").write_text(json.dumps(data, indent=1) + "\n")
    return choice
