"""Study v2: every method at its own best setting, chosen on validation, then 5 paired seeds.

The protocol is ``analysis/claims-protocol.md``, committed before any of these runs; this
module is its plan, step by step. The grid is sequential (a screen at the first grid seed
decides which rates the others run; an edge rate is added where the best lies at the
grid's edge; ISS-P's alpha is chosen at its chosen rate), so ``Grid.next_runs`` is a pure
function of the finished runs: it names the runs the grid needs next, and an empty list
means the grid is complete and ``Grid.choice`` holds. Every process that runs it computes
the same steps from the committed files, so two of them side by side split the work
through the runner's file locks (one that finds every run of a step in the other's hands
goes on to the next step rather than wait), and a later session resumes where one stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from issp import IsspError
from issp.files import write_text
from issp.study.claims import diverged
from issp.study.claims_figure import claims_png
from issp.study.claims_report import (
    ClaimRow,
    cell_means,
    checks_markdown,
    claim_rows,
    claims_json,
    claims_markdown,
    machines_markdown,
    notes,
    secondary_rows,
)
from issp.study.plan import REPORT_DIR, RunFolders, StudyRun, run_name
from issp.study.runner import claimable, execute, test_folders
from issp.train import DEFAULT_PROTOCOL, PRECISIONS, TrainConfig

EDSR, SWINIR = "edsr-tiny", "swinir-tiny"
METHODS = ("dense", "iht", "issp", "gmp", "rigl")
SEEDS = (0, 1, 2, 3, 4)
GRID_SEEDS = (100, 101, 102)
GRID_RATIOS = (0.9, 0.99)
LRS = (1e-3, 3e-3, 1e-2)
EDGE = {1e-3: 3e-4, 1e-2: 3e-2}  # the rate beyond each edge of LRS
SCREEN_DB = 1.0
ALPHA = 0.95  # ISS-P's alpha during the rate grid
OTHER_ALPHAS = (0.9, 0.99)
# Per architecture: the scales and ratios the study runs, and each scale's run settings.
CELLS = {EDSR: {2: (0.9, 0.95, 0.99), 4: (0.9, 0.95, 0.99)}, SWINIR: {2: (0.9, 0.99)}}
SETTINGS = {
    (EDSR, 2): {"steps": 3000, "batch_size": 16, "patch": 48},
    (EDSR, 4): {"steps": 3000, "batch_size": 16, "patch": 24},
    (SWINIR, 2): {"steps": 2000, "batch_size": 16, "patch": 32},
}
PLAN = "claims"  # run folders: analysis/study_runs/claims-grid and claims
WAIT_SECONDS = 60  # between looks while every run left is another process's
PRECISION_FILE = REPORT_DIR / "precision.json"


def precision_of(arch: str, precision_file: Path = PRECISION_FILE) -> str:
    """The arithmetic ``arch`` trains in: edsr-tiny's is what the precision test's rule 1
    decided (an IsspError until it has), swinir-tiny's is fp32."""
    if arch != EDSR:
        return "fp32"
    try:
        adopted = json.loads(precision_file.read_text())["adopted"]
    except (OSError, ValueError, KeyError) as err:
        raise IsspError(f"cannot read the precision decision in {precision_file}: {err}") from None
    if adopted is None:
        raise IsspError("the precision test has not decided yet (analysis/precision.md)")
    return "bf16" if adopted else "channels-last"


def config(
    arch: str,
    scale: int,
    method: str,
    ratio: float,
    lr: float,
    alpha: float,
    seed: int,
    data: str | None,
    precision: str,
) -> TrainConfig:
    """One v2 run: the two-stage protocol with its first and last conv dense."""
    settings = SETTINGS[arch, scale]
    return TrainConfig.of_protocol(
        DEFAULT_PROTOCOL,
        arch=arch,
        scale=scale,
        method=method,
        ratio=0.0 if method == "dense" else ratio,
        lr=lr,
        alpha=alpha,
        seed=seed,
        data=data,
        workers=0,
        val_every=settings["steps"],
        **settings,
        **PRECISIONS[precision],
    )


@dataclass(frozen=True)
class Setting:
    """A method's point of the grid, and in the end its chosen one."""

    method: str
    lr: float
    alpha: float = ALPHA


def setting_runs(
    arch: str,
    setting: Setting,
    seeds: Sequence[int],
    data: str | None,
    precision: str,
    scale: int = 2,
    ratios: Sequence[float] = GRID_RATIOS,
) -> list[StudyRun]:
    """The runs of ``setting`` at ``seeds`` and ``ratios`` (dense: one, at no ratio)."""
    ratios = (0.0,) if setting.method == "dense" else ratios
    configs = [
        config(arch, scale, setting.method, ratio, setting.lr, setting.alpha, seed, data, precision)
        for seed in seeds
        for ratio in ratios
    ]
    return [StudyRun(run_name(c), c) for c in configs]


class Grid:
    """The grid of one architecture over the finished runs ``done`` (result dicts by
    name): ``next_runs`` lists what it needs next, ``choice`` what it chose."""

    def __init__(
        self,
        arch: str,
        done: dict[str, dict],
        data: str | None,
        precision: str,
        issp_alpha: float | None = None,
    ) -> None:
        self.arch, self.done, self.data, self.precision = arch, done, data, precision
        # swinir-tiny's ISS-P takes the alpha edsr-tiny's grid chose; edsr-tiny tunes its own.
        self.issp_alpha = issp_alpha
        self.scores: dict[Setting, float] = {}
        self.screened: dict[str, list[float]] = {}

    def score(self, setting: Setting, seeds: Sequence[int]) -> float | None:
        """``setting``'s mean validation PSNR over its runs at ``seeds`` (both ratios),
        None until they all finished."""
        runs = setting_runs(self.arch, setting, seeds, self.data, self.precision)
        if any(run.name not in self.done for run in runs):
            return None
        score = float(np.mean([self.done[run.name]["val_psnr"] for run in runs]))
        # A run that diverged scores NaN; it must lose every comparison, and max() over a
        # NaN answers by the order of its arguments.
        return score if math.isfinite(score) else -math.inf

    def _missing(self, settings: Sequence[Setting], seeds: Sequence[int]) -> list[StudyRun]:
        runs = [
            r
            for s in settings
            for r in setting_runs(self.arch, s, seeds, self.data, self.precision)
        ]
        return [run for run in runs if run.name not in self.done]

    def method(self, method: str) -> tuple[list[StudyRun], Setting | None]:
        """The runs ``method``'s grid needs next, or (no runs, its chosen setting)."""
        alpha = self.issp_alpha if method == "issp" and self.issp_alpha else ALPHA
        at = {lr: Setting(method, lr, alpha) for lr in LRS}
        missing = self._missing(list(at.values()), GRID_SEEDS[:1])
        if missing:
            return missing, None
        first = {lr: self.score(s, GRID_SEEDS[:1]) for lr, s in at.items()}
        kept = [lr for lr in LRS if first[lr] >= max(first.values()) - SCREEN_DB]
        self.screened[method] = [lr for lr in LRS if lr not in kept]
        missing = self._missing([at[lr] for lr in kept], GRID_SEEDS)
        if missing:
            return missing, None
        scores = {lr: self.score(at[lr], GRID_SEEDS) for lr in kept}
        best = max(scores, key=scores.get)
        if best in EDGE:
            edge = Setting(method, EDGE[best], alpha)
            missing = self._missing([edge], GRID_SEEDS)
            if missing:
                return missing, None
            scores[edge.lr] = self.score(edge, GRID_SEEDS)
            best = max(scores, key=scores.get)
        self.scores |= {Setting(method, lr, alpha): score for lr, score in scores.items()}
        chosen = Setting(method, best, alpha)
        if method != "issp" or self.issp_alpha:
            return [], chosen
        others = [Setting(method, best, a) for a in OTHER_ALPHAS]
        missing = self._missing(others, GRID_SEEDS)
        if missing:
            return missing, None
        alphas = {s: self.score(s, GRID_SEEDS) for s in others} | {chosen: scores[best]}
        self.scores |= alphas
        return [], max(alphas, key=alphas.get)

    def next_runs(self, methods: Sequence[str] = METHODS) -> list[StudyRun]:
        return [run for method in methods for run in self.method(method)[0]]

    def choice(self, methods: Sequence[str] = METHODS) -> dict[str, Setting] | None:
        """Each method's chosen setting, or None while the grid still needs runs."""
        chosen = {method: self.method(method)[1] for method in methods}
        return None if None in chosen.values() else chosen


def study_runs(
    arch: str,
    chosen: dict[str, Setting],
    data: str | None,
    precision: str,
) -> list[StudyRun]:
    """The study's runs of ``arch`` for the chosen settings, seed-major."""
    runs = []
    for seed in SEEDS:
        for scale, ratios in CELLS[arch].items():
            for setting in chosen.values():
                runs += setting_runs(arch, setting, (seed,), data, precision, scale, ratios)
    return runs


# In the protocol's order for when compute runs short: ISS-P and IHT (and dense) at their
# own rates on edsr-tiny, then GMP and RigL, then swinir-tiny.
PHASES = (
    (EDSR, ("dense", "iht", "issp")),
    (EDSR, ("gmp", "rigl")),
    (SWINIR, METHODS),
)


@dataclass(frozen=True)
class Step:
    """What study v2 trains next: a phase's grid or study runs and their folder."""

    what: str
    runs: list[StudyRun]
    folders: RunFolders
    scored: bool  # on Set5/Set14 (the study) or validation only (the grid)


def finished(folders: RunFolders) -> dict[str, dict]:
    """The finished runs in ``folders``, by name."""
    if not folders.results.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folders.results.glob("*.json"))}


def grid_folders() -> RunFolders:
    return RunFolders.of(f"{PLAN}-grid")


def study_folders() -> RunFolders:
    return RunFolders.of(PLAN)


def edsr_alpha(done: dict[str, dict], data: str | None) -> float | None:
    """ISS-P's alpha as edsr-tiny's grid chose it, None while it has not."""
    chosen = Grid(EDSR, done, data, precision_of(EDSR)).choice(("issp",))
    return None if chosen is None else chosen["issp"].alpha


def steps_from(
    done_grid: dict[str, dict], done_study: dict[str, dict], data: str | None
) -> list[Step]:
    """Every step study v2 can train now, in the protocol's order of priority: per phase,
    the grid runs it needs next, then the study runs of each method whose setting its grid
    has chosen. swinir-tiny's ISS-P waits for the alpha edsr-tiny's grid chooses."""
    grid, study = grid_folders(), study_folders()
    steps = []
    for arch, methods in PHASES:
        precision = precision_of(arch)
        alpha = None if arch == EDSR else edsr_alpha(done_grid, data)
        if arch != EDSR and alpha is None:
            methods = tuple(m for m in methods if m != "issp")
        state = Grid(arch, done_grid, data, precision, alpha)
        runs = state.next_runs(methods)
        if runs:
            steps.append(Step(f"{arch} grid ({', '.join(methods)})", runs, grid, scored=False))
        chosen = {m: setting for m in methods if (setting := state.method(m)[1]) is not None}
        runs = [r for r in study_runs(arch, chosen, data, precision) if r.name not in done_study]
        if runs:
            steps.append(Step(f"{arch} study ({', '.join(chosen)})", runs, study, scored=True))
    return steps


def next_steps(data: str | None) -> list[Step]:
    """The steps study v2 can train now, from the committed run files; none when done."""
    return steps_from(finished(grid_folders()), finished(study_folders()), data)


def next_batch(steps: Sequence[Step], jobs: int) -> tuple[Step, list[StudyRun]] | None:
    """What a process trains next: the first step's runs, or where another process holds
    every run of it, the next ``jobs`` free runs further down (a few at a time, so the
    process comes back to the first step as soon as it has work again). None when every
    run left is in other hands."""
    for place, step in enumerate(steps):
        step.folders.work.mkdir(parents=True, exist_ok=True)
        free = [run for run in step.runs if claimable(run, step.folders)]
        if free:
            return step, (step.runs if place == 0 else free[:jobs])
    return None


def run(
    data: str | None,
    test: Path | None,
    jobs: int,
    threads: int | None,
    log: Callable[[str], None] = print,
) -> None:
    """Train study v2 to its end, resuming from the committed run files; where every run
    left is another process's, wait for them rather than spin."""
    if test is None:
        raise IsspError("study v2 scores its runs on Set5 and Set14: give --test")
    while steps := next_steps(data):
        batch = next_batch(steps, jobs)
        if batch is None:
            time.sleep(WAIT_SECONDS)
            continue
        step, runs = batch
        log(f"[{time.strftime('%H:%M:%S')}] {step.what}: {len(step.runs)} runs to go")
        tests = test_folders(test) if step.scored else {}
        # The protocol registers one torch thread per run, whatever the machine's cores.
        execute(runs, step.folders, tests, jobs, log, 1 if threads is None else threads)


def grid_markdown(done: dict[str, dict], data: str | None) -> list[str]:
    """Each architecture's grid: every setting's mean validation PSNR, the rates the
    screen cut, and each method's choice (or how many runs it still needs)."""
    lines = []
    for arch in CELLS:
        try:
            lines += _arch_grid_markdown(arch, done, data)
        except IsspError as err:
            lines += [f"### {arch}", "", f"Not started: {err}.", ""]
    return lines


def _arch_grid_markdown(arch: str, done: dict[str, dict], data: str | None) -> list[str]:
    precision = precision_of(arch)
    alpha = None if arch == EDSR else edsr_alpha(done, data)
    grid = Grid(arch, done, data, precision, alpha)
    lines = [
        f"### {arch} x2 ({precision}; ratios {', '.join(map(str, GRID_RATIOS))}; "
        f"seeds {', '.join(map(str, GRID_SEEDS))})",
        "",
        "| method | lr | alpha | mean validation PSNR (dB) | chosen |",
        "|---|---|---|---|---|",
    ]
    for method in METHODS:
        left, chosen = grid.method(method)
        mine = [(s, score) for s, score in grid.scores.items() if s.method == method]
        for setting, score in sorted(mine, key=lambda item: (item[0].lr, item[0].alpha)):
            alpha_text = f"{setting.alpha:g}" if method == "issp" else ""
            mark = "**chosen**" if setting == chosen else ""
            shown = f"{score:.3f}" if math.isfinite(score) else "diverged (NaN)"
            lines.append(f"| {method} | {setting.lr:g} | {alpha_text} | {shown} | {mark} |")
        if grid.screened.get(method):
            rates = ", ".join(f"{lr:g}" for lr in grid.screened[method])
            screen = f"cut by the screen at seed {GRID_SEEDS[0]}"
            lines.append(f"| {method} | {rates} |  | {screen} |  |")
        if chosen is None:
            lines.append(f"| {method} | | | {len(left)} runs to go | |")
    return [*lines, "", *_runs_markdown(arch, done)]


def _runs_markdown(arch: str, done: dict[str, dict]) -> list[str]:
    """Every finished grid run of ``arch`` and its validation PSNR, folded."""
    keys = ("method", "lr", "alpha", "ratio", "seed")
    runs = sorted(
        (tuple(result["config"][key] for key in keys), name, result["val_psnr"])
        for name, result in done.items()
        if result["config"]["arch"] == arch
    )
    if not runs:
        return []
    lines = [
        f"<details><summary>Every finished {arch} grid run ({len(runs)})</summary>",
        "",
        "| run | validation PSNR (dB) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {psnr:.3f} |" for _, name, psnr in runs]
    return [*lines, "", "</details>", ""]


def planned_names(grid_done: dict[str, dict]) -> set[str]:
    """The names of the study runs the grid's choices so far call for: a run file by any
    other name (another rate, alpha or arithmetic) is no part of the study."""
    names = set()
    for arch in CELLS:
        try:
            alpha = None if arch == EDSR else edsr_alpha(grid_done, None)
            grid = Grid(arch, grid_done, None, precision_of(arch), alpha)
        except IsspError:  # its arithmetic is not decided yet: no run of it can count
            continue
        methods = [m for m in METHODS if not (m == "issp" and arch != EDSR and alpha is None)]
        chosen = {m: setting for m in methods if (setting := grid.method(m)[1]) is not None}
        names |= {run.name for run in study_runs(arch, chosen, None, precision_of(arch))}
    return names


def write_claims(command: str, out: Path = REPORT_DIR) -> list[ClaimRow]:
    """Write ``claims.md``, its forest plot ``claims.png`` and ``claims.json`` into ``out``
    from the finished runs: the claims table, then each method's grid and choice."""
    done, grid_done = finished(study_folders()), finished(grid_folders())
    planned = planned_names(grid_done)
    results = [result for name, result in done.items() if name in planned]
    unplanned = sorted(set(done) - planned)
    rows, secondary = claim_rows(results), secondary_rows(results)
    uncalled = diverged(results)
    figure = claims_png({row.claim: row.evidence for row in rows}, out / "claims.png")
    text = claims_markdown(
        rows, results, command, secondary, uncalled, unplanned, len(planned), figure
    )
    text += "\n## Each method's setting, chosen on validation\n\n"
    text += (
        "The grid of `analysis/claims-protocol.md`, on its own seeds; Set5 and Set14 unseen.\n\n"
    )
    text += "\n".join(grid_markdown(grid_done, None))
    text += checks_markdown(out) + machines_markdown(results, list(grid_done.values()))
    write_text(out / "claims.md", text)
    summary = {
        "command": command,
        "runs": len(results),
        "planned": len(planned),
        "cell_means": cell_means(results),
        "claims": claims_json(rows),
        "notes": notes(rows, uncalled, unplanned),
        "set14": claims_json(secondary),
        "diverged": uncalled,
        "unplanned": unplanned,
    }
    write_text(out / "claims.json", json.dumps(summary, indent=1) + "\n")
    return rows
