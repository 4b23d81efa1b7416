"""What the study and its grid train: their default settings, one ``StudyRun`` per config,
the run names that key the committed result files (``analysis/study_runs/``; a name must
never change, or a finished run is trained again), and the folders the runs lie in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from issp.catalogue import ROOT
from issp.methods import COMPARED
from issp.train import DEFAULT_PROTOCOL, PRECISIONS, TrainConfig

WORK_DIR = ROOT / "runs" / "study"
REPORT_DIR = ROOT / "analysis"  # study.md/.json, protocol_grid.md/.json
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
# The methods a study trains and scores: the compared pair at each ratio, dense once.
STUDY_METHODS = (*COMPARED, "dense")


@dataclass(frozen=True)
class StudyRun:
    """One training run of the study or the grid: a name and the config it trains."""

    name: str
    config: TrainConfig

    def result_path(self, results: Path) -> Path:
        return results / f"{self.name}.json"

    def checkpoint_path(self, work: Path) -> Path:
        return work / f"{self.name}.safetensors"

    def telemetry_path(self, results: Path) -> Path:
        """Where the run's thinned telemetry is kept (``issp.dynamics.thin_telemetry``)."""
        return results / f"{self.name}.telemetry.npz"


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
    methods: Sequence[str] = STUDY_METHODS,
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
