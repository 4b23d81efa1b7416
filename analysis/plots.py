"""Plotly figures of pruning dynamics, and the same figures saved as PNG and HTML.

Every builder takes a ``Dynamics`` (a live snapshot, a stored zoo run or a reloaded JSON
result) and returns a ``plotly.graph_objects.Figure``. Series longer than ``MAX_POINTS``
steps are averaged over bins of consecutive steps, so a 3000-step stored run draws as
fast as a 60-step live one. ``save_figures`` draws each figure once more with matplotlib
(Agg) for the PNGs by translating the plotly figure (:mod:`analysis.figure_files`), so
the two formats cannot disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from analysis.lockstep import Dynamics, gradient_spread, learning_rates
from issp.methods import colour, label

MAX_POINTS = 1000
LAYER_COLORS = qualitative.Dark24
# log10 of |w| below which a weight is drawn as exactly zero in the histogram.
ZERO_FLOOR = -8.0
ROW_HEIGHT = 280
PNG_WIDTH = 1100


def binned(values: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` with at most ``max_points`` rows: the mean over equal bins of
    consecutive steps (NaN ignored) when the series is longer. Steps count from 1."""
    values = np.asarray(values, dtype=np.float64)
    steps = np.arange(1, len(values) + 1, dtype=np.float64)
    if len(values) <= max_points:
        return steps, values
    size = -(-len(values) // max_points)
    pad = (-len(values)) % size
    padded = np.concatenate([values, np.full((pad, *values.shape[1:]), np.nan)])
    step_pad = np.concatenate([steps, np.full(pad, np.nan)])
    with warnings.catch_warnings():
        # A bin of only NaN (nothing selected yet) stays NaN, which is what it should read.
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(padded.reshape(-1, size, *values.shape[1:]), axis=1)
    return np.nanmean(step_pad.reshape(-1, size), axis=1), means


def _short(layer: str) -> str:
    return layer.removesuffix(".weight")


def _mark_kp(fig: go.Figure, dynamics: Dynamics) -> None:
    """A dashed line at Kp, where the mask freezes, on every panel once the run is past it."""
    kp = int(dynamics.config["prune_steps"])
    if kp <= dynamics.step:
        fig.add_vline(x=kp, line_dash="dash", line_color="grey", row="all", col="all")


def _note(fig: go.Figure, col: int, text: str, y: float = 0.5) -> None:
    """A line of text on the panel in column ``col`` (of row 1), for what it cannot draw."""
    axis = col if col > 1 else ""
    fig.add_annotation(
        text=text, showarrow=False, xref=f"x{axis} domain", yref=f"y{axis} domain", x=0.5, y=y
    )


def _finish(fig: go.Figure, title: str, rows: int) -> go.Figure:
    fig.update_layout(
        title=title,
        height=120 + ROW_HEIGHT * rows,
        template="plotly_white",
        margin={"l": 70, "r": 30, "t": 90, "b": 50},
    )
    return fig


def loss_figure(dynamics: Dynamics) -> go.Figure:
    """Training L1 loss per step and validation PSNR, one line per method, and the
    learning rate (shared by the methods), where the two stages of a protocol show.

    A finished run validated at its end only (the study's and so the zoo's edsr-tiny runs),
    or one whose schedule is not recorded, says so on the panel it leaves (nearly) empty.
    """
    fig = make_subplots(
        1, 3, subplot_titles=("training L1 loss", "validation PSNR (dB)", "learning rate")
    )
    rates = learning_rates(dynamics.config)
    if rates is None:
        _note(fig, 3, "not recorded for this run")
    else:
        steps = np.arange(1, min(dynamics.step, len(rates)) + 1)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=rates[: len(steps)],
                mode="lines",
                name="learning rate",
                line_color="black",
                showlegend=False,
            ),
            1,
            3,
        )
    for method, s in dynamics.series.items():
        style = {"name": label(method), "legendgroup": method, "line_color": colour(method)}
        steps, loss = binned(s.loss)
        fig.add_trace(go.Scatter(x=steps, y=loss, mode="lines", **style), 1, 1)
        fig.add_trace(
            go.Scatter(x=s.psnr_steps, y=s.psnr, mode="lines+markers", showlegend=False, **style),
            1,
            2,
        )
    measured = sorted({int(step) for s in dynamics.series.values() for step in s.psnr_steps})
    if dynamics.finished and len(measured) <= 1:
        text = f"validated at step {measured[0]:,} only" if measured else "not recorded"
        _note(fig, 2, text, y=0.8)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step")
    _mark_kp(fig, dynamics)
    return _finish(fig, "Loss and validation PSNR", 1)


def flips_figure(dynamics: Dynamics) -> go.Figure:
    """Mask flips per step summed over layers, and their running total, per method."""
    fig = make_subplots(
        1, 2, subplot_titles=("mask flips per step (all layers)", "cumulative mask flips")
    )
    for method, s in dynamics.series.items():
        style = {"name": label(method), "legendgroup": method, "line_color": colour(method)}
        total = np.nansum(s.flips, axis=1)
        steps, per_step = binned(total)
        fig.add_trace(go.Scatter(x=steps, y=per_step, mode="lines", **style), 1, 1)
        steps, cumulative = binned(np.cumsum(total))
        fig.add_trace(
            go.Scatter(x=steps, y=cumulative, mode="lines", showlegend=False, **style), 1, 2
        )
    fig.update_xaxes(title_text="step")
    _mark_kp(fig, dynamics)
    return _finish(fig, "Mask flips: how much the sparse structure moves", 1)


def flips_heatmap_figure(dynamics: Dynamics) -> go.Figure:
    """Mask flips per layer and step, one heatmap per method on a shared colour scale."""
    methods = list(dynamics.series)
    fig = make_subplots(
        len(methods),
        1,
        subplot_titles=[f"{label(m)}: mask flips per step" for m in methods],
        vertical_spacing=0.12 if len(methods) > 1 else 0,
    )
    top = max((np.nanmax(s.flips, initial=0) for s in dynamics.series.values()), default=0)
    for row, method in enumerate(methods, 1):
        steps, flips = binned(dynamics.series[method].flips)
        fig.add_trace(
            go.Heatmap(
                x=steps,
                y=[_short(layer) for layer in dynamics.layers],
                z=flips.T,
                zmin=0,
                zmax=max(top, 1),
                colorscale="Viridis",
                colorbar={"title": "flips"},
                showscale=row == 1,
            ),
            row,
            1,
        )
    fig.update_xaxes(title_text="step", row=len(methods), col=1)
    return _finish(fig, "Where the mask moves (layer x step)", len(methods))


def _per_layer_figure(
    dynamics: Dynamics, key: str, title: str, axis: str, log: bool = False
) -> go.Figure:
    """One panel per method with a line per layer of telemetry series ``key``."""
    methods = list(dynamics.series)
    fig = make_subplots(
        len(methods),
        1,
        subplot_titles=[f"{label(m)}: {axis}" for m in methods],
        vertical_spacing=0.12 if len(methods) > 1 else 0,
        shared_xaxes=True,
    )
    for row, method in enumerate(methods, 1):
        steps, values = binned(getattr(dynamics.series[method], key))
        for i, layer in enumerate(dynamics.layers):
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values[:, i],
                    mode="lines",
                    name=_short(layer),
                    legendgroup=layer,
                    showlegend=row == 1,
                    line={"color": LAYER_COLORS[i % len(LAYER_COLORS)], "width": 1},
                ),
                row,
                1,
            )
    if log:
        fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="step", row=len(methods), col=1)
    _mark_kp(fig, dynamics)
    return _finish(fig, title, len(methods))


def grad_norm_figure(dynamics: Dynamics) -> go.Figure:
    """Gradient L2 norm of every pruned layer over the steps, one panel per method."""
    return _per_layer_figure(
        dynamics, "grad_norm", "Gradient flow per layer", "gradient L2 norm", log=True
    )


def sparsity_figure(dynamics: Dynamics) -> go.Figure:
    """Fraction of exactly-zero weights per layer over the steps, one panel per method."""
    return _per_layer_figure(dynamics, "sparsity", "Sparsity per layer", "fraction of zeros")


def grad_spread_figure(dynamics: Dynamics) -> go.Figure:
    """How evenly the gradient is spread over layers (std/mean of their norms) per step."""
    fig = make_subplots(1, 1)
    for method, s in dynamics.series.items():
        steps, spread = binned(gradient_spread(s.grad_norm))
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=spread,
                mode="lines",
                name=label(method),
                line_color=colour(method),
            )
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="std / mean of layer gradient norms")
    _mark_kp(fig, dynamics)
    return _finish(fig, "Gradient-norm spread across layers (lower is more even)", 1)


def magnitude_figure(dynamics: Dynamics) -> go.Figure:
    """Mean |w| of kept (solid) and selected (dashed) weights, averaged over layers."""
    fig = make_subplots(1, 1)
    for method, s in dynamics.series.items():
        for key, dash, part in (
            ("kept_abs", "solid", "kept"),
            ("selected_abs", "dash", "selected"),
        ):
            with warnings.catch_warnings():
                # A step with nothing selected has NaN for the selected mean.
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(getattr(s, key), axis=1)
            if np.isnan(mean).all():
                continue
            steps, values = binned(mean)
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=values,
                    mode="lines",
                    name=f"{label(method)} {part}",
                    line={"color": colour(method), "dash": dash},
                )
            )
    fig.update_yaxes(title_text="mean |w|")
    fig.update_xaxes(title_text="step")
    _mark_kp(fig, dynamics)
    return _finish(fig, "Weight magnitude: kept vs selected for pruning", 1)


def weights_figure(dynamics: Dynamics) -> go.Figure:
    """Histogram of log10 |w| at the current step, kept vs selected, one panel per method.

    Exact zeros (IHT's selection) are drawn at ``ZERO_FLOOR``. Stored runs keep no
    weights, so their panels say so.
    """
    methods = list(dynamics.series)
    fig = make_subplots(1, len(methods), subplot_titles=[label(m) for m in methods])
    samples = [
        w
        for s in dynamics.series.values()
        if s.kept_weights is not None
        for w in (s.kept_weights, s.selected_weights)
    ]
    logs = [np.log10(np.maximum(w, 10**ZERO_FLOOR)) for w in samples if len(w)]
    high = max((float(v.max()) for v in logs), default=0.0)
    edges = np.linspace(ZERO_FLOOR - 0.25, high + 0.25, 60)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    for col, method in enumerate(methods, 1):
        s = dynamics.series[method]
        if s.kept_weights is None:
            _note(fig, col, "stored runs keep no |w| sample (see the magnitude figure)")
            continue
        for part, values, color in (
            ("kept", s.kept_weights, colour(method)),
            ("selected", s.selected_weights, "#bcbd22"),
        ):
            if not len(values):
                continue
            counts, _ = np.histogram(np.log10(np.maximum(values, 10**ZERO_FLOOR)), edges)
            fig.add_trace(
                go.Bar(
                    x=centres,
                    y=counts,
                    width=width,
                    name=f"{label(method)} {part} ({len(values):,})",
                    marker_color=color,
                    opacity=0.7,
                ),
                1,
                col,
            )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text=f"log10 |w| (exact zeros at {ZERO_FLOOR:g})")
    fig.update_yaxes(title_text="weights (sample)", col=1)
    return _finish(fig, f"Distribution of |w| at step {dynamics.step:,}", 1)


def alpha_sweep_figure(rows: list[dict]) -> go.Figure:
    """Total mask flips and final PSNR against alpha, from ``alpha_sweep``'s table."""
    names = [f"{r['alpha']:g}" + (" (IHT)" if r["method"] == "iht" else "") for r in rows]
    fig = make_subplots(1, 2, subplot_titles=("total mask flips", "final validation PSNR (dB)"))
    style = {"mode": "lines+markers", "line_color": colour("issp"), "showlegend": False}
    fig.add_trace(go.Scatter(x=names, y=[r["flips"] for r in rows], **style), 1, 1)
    fig.add_trace(go.Scatter(x=names, y=[r["psnr"] for r in rows], **style), 1, 2)
    fig.update_xaxes(title_text="alpha", type="category")
    return _finish(fig, "ISS-P shrink factor alpha", 1)


FIGURES: dict[str, Callable[[Dynamics], go.Figure]] = {
    "loss": loss_figure,
    "flips": flips_figure,
    "flips_heatmap": flips_heatmap_figure,
    "grad_norm": grad_norm_figure,
    "grad_spread": grad_spread_figure,
    "sparsity": sparsity_figure,
    "magnitude": magnitude_figure,
    "weights": weights_figure,
}
