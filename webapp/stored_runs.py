"""The Stored dynamics tab: the zoo's full-length training runs drawn with the live
comparison's figures, without training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from analysis.lockstep import summarize
from analysis.plots import FIGURES
from analysis.stored import list_stored, load_stored, stored_pairs
from issp import IsspError
from issp.catalogue import Manifest
from issp.methods import COMPARED
from webapp.checks import echo
from webapp.live import bullets, figures, verdict


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


def stored_view(directory: str | Path, choice: str | None, manifest: Manifest) -> StoredView:
    """The stored ISS-P and IHT runs (and the dense one, if stored) named by ``choice``,
    from the zoo whose telemetry ``directory`` holds and whose ``manifest`` says how its
    runs were trained.

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
    methods = (*COMPARED, "dense") if dense else COMPARED
    dynamics = load_stored(arch, scale, ratio, methods, directory, manifest)
    text = "\n\n".join(part for part in (verdict(dynamics), bullets(summarize(dynamics))) if part)
    return StoredView(figures(dynamics), text)
