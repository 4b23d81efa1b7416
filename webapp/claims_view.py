"""The Results tab's first page: study v2's verdict on each of the paper's claims.

Read from ``claims.json`` (written by ``python -m issp study claims``) beside the study's
``study.json``: one row per claim with the paper's words, the verdict in words and how
complete it is, the report's notes (what a pending claim waits for, runs left out), how
many of the study's planned runs have finished, each method's Set5 PSNR per cell, and each
claim's per-cell evidence for a forest plot and an expandable panel. The figures are the
report's, shown as stored; a missing or damaged file says so instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from issp.methods import colour, label
from issp.study.claims_figure import CALLS, FOREST, forest_panels, rival_offset

CLAIMS_JSON = "claims.json"  # beside study.json
NO_CLAIMS = (
    "*Study v2 has not reported yet: its protocol is `analysis/claims-protocol.md`, and "
    "`python -m issp study claims` trains it and writes the verdicts.*"
)


@dataclass(frozen=True)
class ClaimsPage:
    """The claims table as Markdown, and each claim's evidence by claim."""

    text: str
    evidence: dict[str, list] = field(default_factory=dict)
    figure: go.Figure | None = None


MARKERS = {"ahead": "circle", "behind": "x", "tie": "circle-open"}


def _legend_entry(name: str, colour_: str, symbol: str, group: str) -> go.Scatter:
    """A legend-only entry: a data trace's legend shows its first point's marker, which is
    a call, not the rival; so rivals (by colour) and calls (by shape) get entries of their
    own and the data traces none."""
    return go.Scatter(
        x=[None],
        y=[None],
        mode="markers",
        marker={"color": colour_, "size": 10, "symbol": symbol},
        name=name,
        legendgroup=group,
        hoverinfo="skip",
    )


def _forest_trace(tests: list[dict], rival: str, cells: list[str], offset: float) -> go.Scatter:
    """One rival's comparisons: a marker per cell at the mean, its 95% interval as error
    bars, nudged by ``offset`` so rivals of one cell sit side by side."""
    mine = [t for t in tests if t["rival"] == rival]
    return go.Scatter(
        x=[t["mean"] for t in mine],
        y=[cells.index(t["cell"]) + offset for t in mine],
        error_x={
            "type": "data",
            "symmetric": False,
            "array": [t["interval95"][1] - t["mean"] for t in mine],
            "arrayminus": [t["mean"] - t["interval95"][0] for t in mine],
        },
        mode="markers",
        marker={"color": colour(rival), "size": 10, "symbol": [MARKERS[t["call"]] for t in mine]},
        name=f"vs {label(rival)}",
        legendgroup=rival,
        showlegend=False,  # the legend's entries are _legend_entry's
        customdata=[[t["cell"], t["call"], t["p_holm"]] for t in mine],
        hovertemplate="%{customdata[0]}: %{x:+.3f}, %{customdata[1]} (Holm p %{customdata[2]:.3f})",
    )


def claims_figure(evidence: dict[str, list]) -> go.Figure | None:
    """A forest plot per claim with per-cell evidence: ISS-P minus the other method's mean
    over seeds with its 95% interval, one row per cell (rivals side by side), the marker
    saying the Holm-corrected call. None while no cell has been called."""
    panels = forest_panels(evidence)
    if not panels:
        return None
    figure = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[FOREST[claim] for claim, _ in panels],
        vertical_spacing=0.3 / len(panels),
    )
    shown: dict[str, None] = {}  # the rivals drawn, in order, for the legend
    for row, (_, tests) in enumerate(panels, start=1):
        cells = list(dict.fromkeys(t["cell"] for t in tests))
        rivals = list(dict.fromkeys(t["rival"] for t in tests))
        for place, rival in enumerate(rivals):
            offset = rival_offset(place, len(rivals))
            figure.add_trace(_forest_trace(tests, rival, cells, offset), row=row, col=1)
            shown[rival] = None
        figure.add_vline(x=0, line_dash="dot", line_color="#555", row=row, col=1)
        figure.update_yaxes(
            tickvals=list(range(len(cells))), ticktext=cells, autorange="reversed", row=row, col=1
        )
    for rival in shown:
        figure.add_trace(_legend_entry(f"vs {label(rival)}", colour(rival), "square", rival))
    for call, words in CALLS.items():
        figure.add_trace(_legend_entry(words, "#555", MARKERS[call], "calls"))
    figure.update_layout(
        height=160 + 200 * len(panels),
        template="plotly_white",
        margin={"l": 140, "r": 20, "t": 60, "b": 40},
        title="Paired differences per cell: mean over seeds, 95% interval; colour: the "
        "other method, shape: the Holm-corrected call",
    )
    return figure


def claims_page(study_json: Path | None) -> ClaimsPage:
    """The claims beside ``study_json``, or a line saying why there are none."""
    path = None if study_json is None else Path(study_json).parent / CLAIMS_JSON
    if path is None or not path.is_file():
        return ClaimsPage(NO_CLAIMS)
    try:
        report = json.loads(path.read_text())
        rows, remarks = report["claims"], report.get("notes", [])
        lines = [
            f"| {row['claim']} | {row['words']} | **{row['verdict']}** | {row['status']} "
            f"| {row['figure']} |"
            for row in rows
        ]
        evidence = {row["claim"]: row["evidence"] for row in rows}
        notes = ["", *(f"- {remark}" for remark in remarks)] if remarks else []
        if "planned" in report:  # how far the study is: the grid's choices so far
            notes += [
                "",
                f"{int(report.get('runs', 0))} study runs finished, of the "
                f"{int(report['planned'])} that the grid's choices so far call for.",
            ]
        means = [str(line) for line in report.get("cell_means", [])]
        if means:  # the absolute figures behind the differences, dense included
            notes += ["", "#### Each method's Set5 PSNR per cell (mean ± SD over seeds)", ""]
            notes += means
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as err:
        return ClaimsPage(f"*The claims file {path.name} cannot be read ({type(err).__name__}).*")
    try:  # a damaged entry costs the plot, not the table
        figure = claims_figure(evidence)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        figure = None
        notes += ["", f"*The evidence cannot be plotted ({type(err).__name__}).*"]
    header = [
        "### The paper's claims, each by the test registered before study v2's runs",
        "",
        "| claim | the paper says | verdict | status | figure (ISS-P minus the other, 95% "
        "interval) |",
        "|---|---|---|---|---|",
    ]
    return ClaimsPage("\n".join(header + lines + notes), evidence, figure)
