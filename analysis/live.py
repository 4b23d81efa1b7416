"""The app's dynamics tabs as plain functions: live comparison, alpha sweep, stored runs.

``app.py`` lays out the widgets and wires them here; the tests call these without a UI.
A live run is a generator of views (figures, a status line, at the end a JSON file), so
the UI can stream it. ``LiveRuns`` admits runs (a bounded number, one per browser
session), lines them up and keeps the stop event of each: a new run from the same session
stops the old one, and the Stop button sets the event, which ``run_lockstep`` checks
before every step. (A closed tab needs nothing from us: Gradio stops iterating a run
whose client has gone.)
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis.lockstep import (
    MAX_STEPS,
    Dynamics,
    LockstepConfig,
    alpha_sweep,
    label,
    run_lockstep,
    summarize,
    to_json,
)
from analysis.plots import FIGURES, alpha_sweep_figure
from analysis.stored import list_stored, load_stored, stored_pairs
from issp import IsspError
from issp.service import echo

LIVE_ARCHS = ("edsr-tiny", "swinir-tiny")
# Methods the user may add to the ISS-P vs IHT pair, by their UI names.
EXTRA_METHODS = {"dense": "dense", "GMP": "gmp"}
SWEEP_ALPHAS = (0.0, 0.5, 0.9, 0.95, 0.99)
SWEEP_COLUMNS = ("alpha", "method", "flips", "psnr")
# Seeds any torch and NumPy call takes: larger ones (2**63 and up) overflow inside them.
MAX_SEED = 2**31 - 1
# Snapshots every steps/UPDATES steps, within these bounds: often enough to watch, while
# drawing the eight figures (about 0.2 s) stays a small part of the run.
UPDATES = 25
EVERY_BOUNDS = (5, 50)


@dataclass(frozen=True)
class LiveRun:
    """One admitted live run or sweep: its session and the event that stops it."""

    session: str
    stop: threading.Event


class LiveRuns:
    """The live runs and alpha sweeps the server has admitted, in the order they run.

    Training is slow and the server small, so admission is bounded: at most ``capacity``
    runs are admitted at once (running or waiting), ``slots`` of them run at a time and the
    rest wait their turn here rather than in Gradio's queue, which so always has room for
    upscaling. Past ``capacity`` a new run is refused at once. A session has one run at a
    time: a new one stops the session's old one and takes its place in the line. A run
    leaves the line when its ``with`` block ends, however it ends. Thread-safe.
    """

    def __init__(self, capacity: int = 4, slots: int = 1) -> None:
        if not 1 <= slots <= capacity:
            raise IsspError(f"need 1 <= slots <= capacity, got {slots} and {capacity}")
        self.capacity = capacity
        self.slots = slots
        self._changed = threading.Condition()
        # Admitted runs, oldest first; the first `slots` of them run.
        self._line: list[LiveRun] = []

    @contextmanager
    def admitted(self, session: str) -> Iterator[LiveRun]:
        """A place in the line for a run of ``session`` while the ``with`` block lasts.

        Raises IsspError at once, taking no place, when ``capacity`` other sessions have
        runs admitted already. (A session's replaced run, still ending, does not count
        twice.)
        """
        with self._changed:
            earlier = [run for run in self._line if run.session == session]
            if not earlier and len({run.session for run in self._line}) >= self.capacity:
                raise IsspError(
                    f"the server is busy training: {self.capacity} runs are running or "
                    "waiting, the most it takes at once; try again when one has finished"
                )
            run = LiveRun(session, threading.Event())
            for old in earlier:
                old.stop.set()
            # The session keeps its place: its stopped run ends at its next step.
            place = self._line.index(earlier[-1]) + 1 if earlier else len(self._line)
            self._line.insert(place, run)
            self._changed.notify_all()
        try:
            yield run
        finally:
            with self._changed:
                self._line.remove(run)
                self._changed.notify_all()

    def _ahead(self, run: LiveRun) -> int:
        return max(self._line.index(run) - self.slots + 1, 0)

    def wait(self, run: LiveRun, every: float = 5.0) -> Iterator[str]:
        """Until ``run`` may start or is stopped, yield a status saying how many runs are
        ahead of it: at once, whenever that changes, and at least every ``every`` seconds
        (a stream that yields now and then notices a client that has gone)."""
        with self._changed:
            ahead = self._ahead(run)
        while ahead and not run.stop.is_set():
            yield (
                f"**Waiting:** {ahead} run{'s' if ahead > 1 else ''} ahead of yours (runs go "
                f"{self.slots} at a time; at most {self.capacity} running or waiting)."
            )
            with self._changed:
                self._changed.wait_for(
                    lambda seen=ahead: self._ahead(run) != seen or run.stop.is_set(),
                    timeout=every,
                )
                ahead = self._ahead(run)

    def stop(self, session: str) -> bool:
        """Ask the session's run to stop (a waiting one stops waiting); False if none."""
        with self._changed:
            runs = [run for run in self._line if run.session == session]
            for run in runs:
                run.stop.set()
            self._changed.notify_all()
        return bool(runs)

    def active(self) -> int:
        """How many runs are admitted now, running or waiting."""
        with self._changed:
            return len(self._line)


def _whole(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else IsspError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise IsspError(f"{name} must be a whole number, got {echo(value)}") from None
    if not number.is_integer():
        raise IsspError(f"{name} must be a whole number, got {echo(value)}")
    if number < low or (high is not None and number > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high:,}"
        raise IsspError(f"{name} must be {bound}, got {echo(value)}")
    return int(number)


def _number(value: object, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise IsspError(f"{name} must be a number, got {echo(value)}") from None


def live_config(
    arch: str,
    scale: int,
    ratio: float,
    alpha: float,
    steps: int,
    prune_steps: int | None,
    seed: int,
    extra: Sequence[str] = (),
    base: LockstepConfig | None = None,
) -> LockstepConfig:
    """The checked ``LockstepConfig`` of a UI or API request; IsspError for bad input.

    ``prune_steps`` (Kp) None or 0 means 60% of the steps; ``extra`` adds ``dense`` and/or
    ``GMP`` to ISS-P and IHT. ``base`` supplies everything the user does not pick (batch,
    patch, data, one torch thread).
    """
    if arch not in LIVE_ARCHS:
        raise IsspError(f"architecture must be one of {', '.join(LIVE_ARCHS)}, got {echo(arch)}")
    extra = extra or ()
    if not isinstance(extra, list | tuple) or not all(
        isinstance(m, str) and m in EXTRA_METHODS for m in extra
    ):
        raise IsspError(
            f"extra methods must be among {', '.join(EXTRA_METHODS)}, got {echo(extra)}"
        )
    config = dataclasses.replace(
        base or LockstepConfig(),
        arch=arch,
        scale=_whole(scale, "scale", 2, 4),
        ratio=_number(ratio, "pruning ratio"),
        alpha=_number(alpha, "alpha"),
        steps=_whole(steps, "steps", 1),
        # A number box cannot be empty, so 0 stands for the default as None does.
        prune_steps=_whole(prune_steps, "pruning stage", 1) if prune_steps else None,
        seed=_whole(seed, "seed", 0, MAX_SEED),
        methods=("issp", "iht", *(EXTRA_METHODS[m] for m in EXTRA_METHODS if m in extra)),
    )
    config.validate()
    return config


def snapshot_interval(steps: int) -> int:
    """Steps between two live updates of a run of ``steps`` steps."""
    low, high = EVERY_BOUNDS
    return min(max(steps // UPDATES, low), high)


@dataclass(frozen=True)
class LiveView:
    """What the live tab shows at one moment: figures in ``FIGURES`` order (None before
    the first snapshot), a status in Markdown, and the JSON file once the run has ended."""

    figures: tuple[go.Figure | None, ...]
    status: str
    download: Path | None = None


def figures(dynamics: Dynamics) -> tuple[go.Figure, ...]:
    """Every figure of ``FIGURES`` for one snapshot, in that order."""
    return tuple(build(dynamics) for build in FIGURES.values())


def total_flips(dynamics: Dynamics) -> dict[str, int]:
    """Mask flips per method summed over layers and steps so far."""
    return {m: int(np.nansum(s.flips)) for m, s in dynamics.series.items()}


def verdict(dynamics: Dynamics) -> str:
    """One plain sentence on ISS-P against IHT, read off the data ('' without both)."""
    if not {"issp", "iht"} <= set(dynamics.series):
        return ""
    flips = total_flips(dynamics)
    issp, iht = flips["issp"], flips["iht"]
    if issp > iht:
        times = f", {issp / iht:.1f} times as many" if iht else ""
        text = (
            f"ISS-P's mask kept moving: {issp:,} flips against IHT's {iht:,}{times}. "
            "Shrunk weights can grow back above the threshold; zeroed ones rarely do."
        )
    else:
        text = f"Here IHT's mask moved at least as much as ISS-P's ({iht:,} flips vs {issp:,})."
    psnr = {m: s.psnr[-1] for m, s in dynamics.series.items() if len(s.psnr)}
    if "issp" in psnr and "iht" in psnr:
        gap = float(psnr["issp"] - psnr["iht"])
        text += f" ISS-P ended {abs(gap):.2f} dB {'above' if gap >= 0 else 'below'} IHT."
    return text


def write_json(dynamics: Dynamics, folder: str | Path) -> Path:
    """Write ``to_json(dynamics)`` into ``folder``; the file name says what was run."""
    config = dynamics.config
    name = (
        f"dynamics_{config['arch']}_x{config['scale']}_r{config['ratio']:g}"
        f"_a{config['alpha']:g}_step{dynamics.step}.json"
    )
    path = Path(folder) / name
    path.write_text(json.dumps(to_json(dynamics)), encoding="utf-8")
    return path


def _bullets(text: str) -> str:
    """``summarize``'s lines as a Markdown list, which keeps them apart when rendered."""
    return "\n".join(f"- {line}" for line in text.splitlines())


def _progress(dynamics: Dynamics) -> str:
    config = dynamics.config
    flips = ", ".join(f"{label(m)} {n:,}" for m, n in total_flips(dynamics).items())
    return (
        f"**Running:** step {dynamics.step:,} of {config['steps']:,} "
        f"(pruning stage Kp = {config['prune_steps']:,}). Mask flips so far: {flips}."
    )


def live_run(
    config: LockstepConfig,
    stop: threading.Event,
    new_folder: Callable[[], Path],
    every: int | None = None,
) -> Iterator[LiveView]:
    """Train ``config`` in lockstep and yield a view every ``every`` steps.

    The last view says whether the run finished or was stopped, gives the summary and
    the path of the run's JSON (written into a fresh ``new_folder()``). A run stopped
    before its first snapshot ends with a status and nothing else.
    """
    every = every or snapshot_interval(config.steps)
    started = time.monotonic()
    last, drawn = None, None
    for snapshot in run_lockstep(config, stop, every):
        last, drawn = snapshot, figures(snapshot)
        if not snapshot.finished:
            yield LiveView(drawn, _progress(snapshot))
    if last is None:
        yield LiveView((None,) * len(FIGURES), "**Stopped** before the first snapshot.")
        return
    seconds = time.monotonic() - started
    if last.finished:
        head = f"**Finished** all {last.step:,} steps in {seconds:.0f} s."
    else:
        head = f"**Stopped** at step {last.step:,} of {config.steps:,} after {seconds:.0f} s."
    text = "\n\n".join(part for part in (head, verdict(last), _bullets(summarize(last))) if part)
    yield LiveView(drawn, text, write_json(last, new_folder()))


@dataclass(frozen=True)
class SweepView:
    """The alpha sweep so far: rows as in ``alpha_sweep``, their figure, a status."""

    rows: list[dict]
    figure: go.Figure | None
    status: str


def sweep_alphas(alphas: Sequence[float], steps: int) -> tuple[float, ...]:
    """The sorted alphas of a sweep request; IsspError if none, one outside [0, 1), or too
    many steps in all."""
    if not alphas:
        raise IsspError("pick at least one alpha")
    if not isinstance(alphas, list | tuple):
        raise IsspError(f"alphas must be a list of numbers, got {echo(alphas)}")
    values = tuple(sorted({_number(a, "alpha") for a in alphas}))
    # alpha_sweep checks this too, but only once its first run is over.
    if not all(0 <= a < 1 for a in values):
        raise IsspError(f"alphas must be in [0, 1), got {echo(list(values))}")
    if len(values) * steps > MAX_STEPS:
        raise IsspError(
            f"a sweep runs at most {MAX_STEPS:,} steps in all; {len(values)} alphas of "
            f"{steps:,} steps are {len(values) * steps:,}"
        )
    return values


def alpha_name(alpha: float) -> str:
    """How an alpha is shown: ``0.99``, or ``0 (IHT)`` for zero."""
    return "0 (IHT)" if alpha == 0 else f"{alpha:g}"


def sweep_run(
    config: LockstepConfig, alphas: Sequence[float], stop: threading.Event
) -> Iterator[SweepView]:
    """Run ``config`` (ISS-P alone; alpha 0 is IHT) once per alpha, a view per finished run.

    ``config.methods`` and ``config.alpha`` are replaced per run; the runs share the seed
    and so the initial weights and batches.
    """
    alphas = sweep_alphas(alphas, config.steps)
    count = len(alphas)
    yield SweepView([], None, f"**Running** alpha {alpha_name(alphas[0])} (1 of {count}).")
    rows: list[dict] = []
    for rows in alpha_sweep(config, alphas, stop):
        if len(rows) < count:
            upcoming = f"alpha {alpha_name(alphas[len(rows)])} ({len(rows) + 1} of {count})"
            yield SweepView(rows, alpha_sweep_figure(rows), f"**Running** {upcoming}.")
    figure = alpha_sweep_figure(rows) if rows else None
    if len(rows) < count:
        yield SweepView(rows, figure, f"**Stopped** after {len(rows)} of {count} alphas.")
        return
    first, last = rows[0], rows[-1]
    status = (
        f"**Finished** {count} runs of {config.steps:,} steps. From alpha "
        f"{alpha_name(first['alpha'])} to {alpha_name(last['alpha'])} the total mask flips "
        f"went from {first['flips']:,} to {last['flips']:,} and the final PSNR from "
        f"{first['psnr']:.2f} to {last['psnr']:.2f} dB."
    )
    yield SweepView(rows, figure, status)


@dataclass(frozen=True)
class StoredView:
    """A stored run drawn: figures in ``FIGURES`` order (None when nothing is stored)."""

    figures: tuple[go.Figure | None, ...]
    status: str


def _stored(directory: str | Path) -> dict[str, tuple[str, int, float]]:
    """Every (arch, scale, ratio) stored for both ISS-P and IHT, by its label."""
    return {f"{a} x{s}, ratio {r:g}": (a, s, r) for a, s, r in stored_pairs(directory)}


def stored_choices(directory: str | Path) -> list[str]:
    """One label per (arch, scale, ratio) stored for both ISS-P and IHT."""
    return list(_stored(directory))


def stored_view(directory: str | Path, choice: str | None) -> StoredView:
    """The stored ISS-P and IHT runs (and the dense one, if stored) named by ``choice``.

    ``choice`` None takes the first stored pair; an empty folder gives a message instead
    of figures, since the zoo build fills it while the app runs.
    """
    pairs = _stored(directory)
    if not pairs:
        return StoredView(
            (None,) * len(FIGURES),
            "No stored dynamics yet: `python -m issp zoo build` stores each run's telemetry "
            "as its checkpoint finishes (ISS-P and IHT of the same setting are needed). "
            "Press Refresh later.",
        )
    if choice is None:
        choice = next(iter(pairs))
    if not isinstance(choice, str) or choice not in pairs:
        raise IsspError(f"no stored run {echo(choice)}; stored: {'; '.join(pairs)}")
    arch, scale, ratio = pairs[choice]
    dense = any(
        (r.entry.arch, r.entry.scale, r.entry.method) == (arch, scale, "dense")
        for r in list_stored(directory)
    )
    methods = ("issp", "iht", "dense") if dense else ("issp", "iht")
    dynamics = load_stored(arch, scale, ratio, methods, directory)
    text = "\n\n".join(part for part in (verdict(dynamics), _bullets(summarize(dynamics))) if part)
    return StoredView(figures(dynamics), text)
