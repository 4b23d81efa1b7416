"""Study v2's paired differences per cell as one static figure (``analysis/claims.png``,
written with the report): a forest plot per claim whose evidence is a paired comparison
per cell, so a reader of ``claims.md`` sees the intervals and the seeds at a glance. The
app draws the same evidence with plotly (:mod:`webapp.claims_view`); both take their
panels and calls from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from issp.files import replacing
from issp.methods import colour, label

# The claims whose evidence is one paired comparison per cell, and each one's panel title.
FOREST = {
    "C1": "C1: Set5 PSNR, ISS-P − IHT (dB; Holm over its cells so far, 8 at the end)",
    "C3": "C3: Set5 PSNR on swinir-tiny, ISS-P − IHT (dB; Holm over its 2 cells)",
    "C4": "C4: log10 mask flips before Kp, ISS-P − IHT",
    "C5": "C5: CV of the gradient norm, ISS-P − IHT (lower: smoother)",
    "C6": "C6: Set5 PSNR, ISS-P − each baseline (dB; Holm over those so far, 24 at the end)",
}
CALLS = {"ahead": "ISS-P ahead", "tie": "tie", "behind": "ISS-P behind"}  # by marker shape
RIVAL_STEP = 0.25  # rows apart, rivals of one cell side by side


def called_cells(entries: Sequence[Mapping]) -> list[Mapping]:
    """The per-cell comparisons of one claim's evidence; the figures reported beside the
    deciding one (C5's) and summaries over cells carry other keys and are left out."""
    return [e for e in entries if "cell" in e and "reported" not in e and "part" not in e]


def forest_panels(evidence: Mapping[str, Sequence[Mapping]]) -> list[tuple[str, list]]:
    """``(claim, its per-cell comparisons)`` for each claim of ``FOREST`` with any."""
    panels = [(claim, called_cells(evidence.get(claim, []))) for claim in FOREST]
    return [(claim, tests) for claim, tests in panels if tests]


def rival_offset(place: int, rivals: int) -> float:
    """How far the ``place``-th of ``rivals`` comparisons of a cell sits from its row."""
    return (place - (rivals - 1) / 2) * RIVAL_STEP


def _panel(ax, tests: Sequence[Mapping]) -> None:
    """One claim: per cell and rival, each seed's difference as a dot, the mean with its
    95% interval, the marker filled where ISS-P is ahead, open for a tie, x behind."""
    cells = list(dict.fromkeys(t["cell"] for t in tests))
    rivals = list(dict.fromkeys(t["rival"] for t in tests))
    for place, rival in enumerate(rivals):
        for test in (t for t in tests if t["rival"] == rival):
            y = cells.index(test["cell"]) + rival_offset(place, len(rivals))
            low, high = test["interval95"]
            seeds = test.get("differences", [])
            ax.plot(seeds, [y] * len(seeds), "o", ms=2.5, color="#999", zorder=1)
            ax.plot([low, high], [y, y], color=colour(rival), lw=1.5, zorder=2)
            call = test["call"]
            face = "none" if call == "tie" else colour(rival)
            ax.plot(
                [test["mean"]],
                [y],
                "x" if call == "behind" else "o",
                ms=7,
                mec=colour(rival),
                mfc=face,
                mew=1.8,
                zorder=3,
            )
    ax.axvline(0, color="#555", ls=":", lw=1)
    ax.set_yticks(range(len(cells)), cells, fontsize=8)
    ax.set_ylim(len(cells) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=8)


def _legend(figure: Figure, rivals: Sequence[str]) -> None:
    """Rivals by colour, calls by shape, seeds by the grey dot."""
    handles = [Line2D([], [], color=colour(r), lw=2, label=f"vs {label(r)}") for r in rivals]
    shapes = {"ahead": ("o", "#555"), "tie": ("o", "none"), "behind": ("x", "#555")}
    for call, words in CALLS.items():
        marker, face = shapes[call]
        handles.append(
            Line2D([], [], ls="", marker=marker, ms=7, mec="#555", mfc=face, label=words)
        )
    handles.append(Line2D([], [], ls="", marker="o", ms=3, color="#999", label="one seed"))
    figure.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False
    )


def claims_png(evidence: Mapping[str, Sequence[Mapping]], path: Path) -> Path | None:
    """Draw the forest plot of ``evidence`` (a claim's rows, as in ``claims.json``) into
    ``path`` as a PNG; None while no cell has been called, and no figure left at ``path``
    (an older one would show evidence the report no longer has)."""
    panels = forest_panels(evidence)
    if not panels:
        path.unlink(missing_ok=True)
        return None
    heights = [len({t["cell"] for t in tests}) + 1.2 for _, tests in panels]
    figure = Figure(figsize=(9, 1.2 + 0.32 * sum(heights)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (claim, tests) in zip(axes, panels, strict=True):
        _panel(ax, tests)
        ax.set_title(FOREST[claim], fontsize=9, loc="left")
    rivals = dict.fromkeys(t["rival"] for _, tests in panels for t in tests)
    _legend(figure, list(rivals))
    figure.suptitle(
        "Paired differences per cell: mean over seeds with its 95% interval; "
        "shape: the Holm-corrected call",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    # No software version in the file, so it changes only when the figures do.
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})
    return path
