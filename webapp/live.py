"""Live comparisons and alpha sweeps as streams of views for the app's tabs.

A live run is a generator of views (figures, a status line, at the end a JSON file), so
the UI can stream it; :mod:`webapp.admission` decides when it may start, and its stop
event ends it at the next step. The training itself is :mod:`analysis.lockstep`'s.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from analysis.lockstep import (
    MAX_STEPS,
    Dynamics,
    LockstepConfig,
    alpha_sweep,
    run_lockstep,
    summarize,
    to_json,
)
from analysis.plots import FIGURES, alpha_sweep_figure
from issp import IsspError
from issp.files import write_text
from issp.methods import COMPARED, REFERENCES, by_label, label
from issp.selection import PER_LAYER, parse_pattern
from webapp.checks import MAX_SEED, echo, number, whole

LIVE_ARCHS = ("edsr-tiny", "swinir-tiny")
# Methods the user may add to the ISS-P vs IHT pair, by their UI names.
EXTRA_METHODS = by_label(REFERENCES)
# N:M patterns the live tab offers (the API takes any): sparse hardware's 2:4, and the
# ratios 0.9 and 0.95 the zoo is trained at, as groups.
PATTERNS = (PER_LAYER, "2:4", "9:10", "19:20")
SWEEP_ALPHAS = (0.0, 0.5, 0.9, 0.95, 0.99)
SWEEP_COLUMNS = ("alpha", "method", "flips", "psnr")
# Snapshots every steps/UPDATES steps, within these bounds: often enough to watch, while
# drawing the eight figures (about 0.2 s) stays a small part of the run.
UPDATES = 25
EVERY_BOUNDS = (5, 50)


def check_pattern(pattern: object) -> str | None:
    """The N:M pattern a request names (``issp.selection.parse_pattern``'s rule), or None
    for ``PER_LAYER`` (or nothing); IsspError for anything else."""
    if pattern is None or (isinstance(pattern, str) and pattern.strip() in ("", PER_LAYER)):
        return None
    try:
        n, m = parse_pattern(pattern)
    except IsspError:
        # parse_pattern quotes the value whole; a request's is cut (webapp.checks.echo).
        raise IsspError(
            f"pattern must be {PER_LAYER!r} or N:M with 0 < N < M, e.g. 2:4, got {echo(pattern)}"
        ) from None
    return f"{n}:{m}"


def pattern_ratio(pattern: object) -> float | None:
    """The pruning ratio an N:M pattern prunes (N / M), None for per layer; IsspError for
    a pattern ``check_pattern`` refuses. A patterned run must ask for exactly this ratio."""
    checked = check_pattern(pattern)
    if checked is None:
        return None
    n, m = parse_pattern(checked)
    return n / m


def live_config(
    arch: str,
    scale: int,
    ratio: float,
    alpha: float,
    steps: int,
    prune_steps: int | None,
    seed: int,
    extra: Sequence[str] = (),
    pattern: str | None = None,
    base: LockstepConfig | None = None,
) -> LockstepConfig:
    """The checked ``LockstepConfig`` of a UI or API request; IsspError for bad input.

    ``prune_steps`` (Kp) None or 0 means the live protocol's share of the steps; ``extra``
    adds ``dense`` and/or ``GMP`` to ISS-P and IHT; ``pattern`` ``"N:M"`` selects N of
    every M weights in ISS-P, IHT and GMP (``ratio`` must be N / M), None or ``PER_LAYER``
    the smallest of each layer. ``base`` supplies everything the user does not pick
    (batch, patch, data, one torch thread).
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
        scale=whole(scale, "scale", 2, 4),
        ratio=number(ratio, "pruning ratio"),
        alpha=number(alpha, "alpha"),
        steps=whole(steps, "steps", 1, MAX_STEPS),
        # A number box cannot be empty, so 0 stands for the default as None does.
        prune_steps=whole(prune_steps, "pruning stage", 1, MAX_STEPS) if prune_steps else None,
        seed=whole(seed, "seed", 0, MAX_SEED),
        methods=(*COMPARED, *(EXTRA_METHODS[m] for m in EXTRA_METHODS if m in extra)),
        pattern=check_pattern(pattern),
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
    if not set(COMPARED) <= set(dynamics.series):
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
    pattern = f"_nm{config['pattern'].replace(':', '-')}" if config.get("pattern") else ""
    name = (
        f"dynamics_{config['arch']}_x{config['scale']}_r{config['ratio']:g}{pattern}"
        f"_a{config['alpha']:g}_step{dynamics.step}.json"
    )
    path = Path(folder) / name
    return write_text(path, json.dumps(to_json(dynamics)))


def bullets(text: str) -> str:
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
    text = "\n\n".join(part for part in (head, verdict(last), bullets(summarize(last))) if part)
    yield LiveView(drawn, text, write_json(last, new_folder()))


@dataclass(frozen=True)
class SweepView:
    """The alpha sweep so far: rows as in ``alpha_sweep``, their figure, a status."""

    rows: list[dict]
    figure: go.Figure | None
    status: str


def checked_sweep(alphas: Sequence[float], steps: int) -> tuple[float, ...]:
    """The sorted alphas of a sweep request; IsspError if none, one outside [0, 1), or too
    many steps in all."""
    if not alphas:
        raise IsspError("pick at least one alpha")
    if not isinstance(alphas, list | tuple):
        raise IsspError(f"alphas must be a list of numbers, got {echo(alphas)}")
    values = tuple(sorted({number(a, "alpha") for a in alphas}))
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
    alphas = checked_sweep(alphas, config.steps)
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
