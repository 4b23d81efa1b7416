"""The dynamics figures saved as files: a PNG each, drawn with matplotlib (Agg) by
translating the plotly figure so the two formats cannot disagree, and one self-contained
HTML page with all of them (``python -m issp plot``).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from analysis.lockstep import Dynamics, summarize
from analysis.plots import FIGURES, PNG_WIDTH
from issp import IsspError
from issp.files import replacing, write_text


def save_figures(dynamics: Dynamics, out_dir: str | Path) -> list[Path]:
    """Write every figure of ``FIGURES`` as ``<name>.png`` and all of them, with the
    summary, as one self-contained ``dynamics.html`` (plotly.js inlined once, so it
    opens offline). Returns the written paths."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IsspError(f"{out} is a file; give a folder for the figures")
    written, parts = [], []
    for i, (name, build) in enumerate(FIGURES.items()):
        fig = build(dynamics)
        path = out / f"{name}.png"
        with replacing(path) as tmp:
            to_matplotlib(fig).savefig(tmp, format="png")
        written.append(path)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    page = out / "dynamics.html"
    write_text(
        page,
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>issp dynamics</title>"
        "</head><body>\n<pre>"
        + html.escape(summarize(dynamics))
        + "</pre>\n"
        + "\n".join(parts)
        + "\n</body></html>\n",
    )
    return [*written, page]


def _draw_trace(figure: MplFigure, ax, trace, colorbar_x: float) -> None:
    """One plotly scatter, bar or heatmap trace onto a matplotlib axis."""
    if isinstance(trace, go.Heatmap):
        image = ax.imshow(
            np.asarray(trace.z, dtype=float),
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=trace.zmin,
            vmax=trace.zmax,
            extent=(trace.x[0], trace.x[-1], -0.5, len(trace.y) - 0.5),
            interpolation="nearest",
        )
        ax.set_yticks(range(len(trace.y)), trace.y, fontsize=6)
        if trace.showscale is not False:
            # A colorbar axis of its own, so the panels keep equal widths.
            box = ax.get_position()
            figure.colorbar(image, cax=figure.add_axes((colorbar_x, box.y0, 0.01, box.height)))
    elif isinstance(trace, go.Bar):
        ax.bar(
            trace.x,
            trace.y,
            width=trace.width,
            color=trace.marker.color,
            alpha=trace.opacity,
            label=trace.name,
        )
    else:
        ax.plot(
            trace.x,
            np.asarray(trace.y, dtype=float),
            marker="o" if "markers" in (trace.mode or "") else None,
            markersize=3,
            color=trace.line.color,
            linestyle="--" if trace.line.dash == "dash" else "-",
            linewidth=trace.line.width or 1.5,
            label=trace.name if trace.showlegend is not False else None,
        )


def _figure_legend(figure: MplFigure, axes: list) -> None:
    """One legend for the whole figure, each name once, right of the panels."""
    handles = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(name, handle)
    if handles:
        figure.legend(
            handles.values(),
            handles.keys(),
            loc="upper left",
            bbox_to_anchor=(0.87, 0.88),
            fontsize=7,
            frameon=False,
        )


def to_matplotlib(fig: go.Figure) -> MplFigure:
    """Redraw a figure built here with matplotlib (Agg): its scatter, bar and heatmap
    traces, log axes, subplot titles and Kp lines. Heatmaps use viridis."""
    layout = fig.layout
    # Plotly figures size themselves to the page; a PNG needs a width of its own.
    width, height = layout.width or PNG_WIDTH, layout.height or 400
    figure = MplFigure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(figure)
    left, right, bottom, top = 0.08, 0.86, 0.1, 0.86

    def place(x: float, y: float) -> tuple[float, float]:
        return left + x * (right - left), bottom + y * (top - bottom)

    axes = {}

    def axis_for(xref: str, yref: str):
        if (xref, yref) not in axes:
            xaxis, yaxis = layout[f"xaxis{xref[1:]}"], layout[f"yaxis{yref[1:]}"]
            x0, y0 = place(xaxis.domain[0], yaxis.domain[0])
            x1, y1 = place(xaxis.domain[1], yaxis.domain[1])
            ax = figure.add_axes((x0, y0, x1 - x0, (y1 - y0) * 0.86))
            if yaxis.type == "log":
                ax.set_yscale("log")
            ax.set_xlabel(xaxis.title.text or "", fontsize=8)
            ax.set_ylabel(yaxis.title.text or "", fontsize=8)
            ax.tick_params(labelsize=7)
            axes[(xref, yref)] = ax
        return axes[(xref, yref)]

    for trace in fig.data:
        _draw_trace(figure, axis_for(trace.xaxis or "x", trace.yaxis or "y"), trace, right + 0.01)
    for shape in layout.shapes:
        key = (shape.xref, shape.yref.removesuffix(" domain"))
        if key in axes:
            axes[key].axvline(shape.x0, color="grey", linestyle="--", linewidth=1)
    for note in layout.annotations:
        if note.xref == "paper":
            x, y = place(note.x, note.y)
            figure.text(x, y, note.text, ha="center", va="bottom", fontsize=9)
        else:
            ax = axis_for(note.xref.removesuffix(" domain"), note.yref.removesuffix(" domain"))
            ax.text(note.x, note.y, note.text, ha="center", va="center", transform=ax.transAxes)
    _figure_legend(figure, list(axes.values()))
    figure.suptitle(layout.title.text or "", fontsize=12)
    return figure
