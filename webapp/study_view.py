"""The Results tab's paired-seed study: ``analysis/study.json`` as types, PSNR against
pruning ratio with the seed spread, each seed's paired ISS-P minus IHT with the 95%
interval of its mean, and the per-ratio verdicts in words.

``python -m issp study report`` writes the file (:func:`issp.study.write_study`); its
numbers and verdicts are :func:`issp.study.study_summary`'s, shown here as stored and never
recomputed, so the tab and ``analysis/study.md`` cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from issp import IsspError, study
from issp.methods import COMPARED, colour, label
from webapp.checks import check_choice, echo, user_message

# Where ``study report`` writes by default (write_study's ``out``).
STUDY_JSON = study.REPORT_DIR / study.STUDY_JSON
NO_STUDY = (
    "*No paired-seed study yet: `python -m issp study report` writes it once the "
    "study's runs have finished.*"
)
# How far the dense reference line reaches past the outermost ratios, so that it still
# shows as a line where only one ratio has finished.
DENSE_MARGIN = 0.005
# How far left of its ratio a single seed's paired difference is drawn, off the mean's bar.
SEED_OFFSET = 0.004
DIFFERENCE = f"{label('issp')} − {label('iht')}"


@dataclass(frozen=True)
class StudySummary:
    """``analysis/study.json``: the command that wrote it, how many runs had finished (of
    how many planned, where it says), and one row per (scale, ratio, metric)."""

    command: str
    runs: int
    rows: tuple[study.SummaryRow, ...]
    planned: int | None = None

    @classmethod
    def from_json(cls, data: object) -> StudySummary:
        """The study ``data`` describes; IsspError saying what is wrong with it."""
        if not isinstance(data, dict):
            raise IsspError("is not a JSON object")
        if not isinstance(data.get("command"), str) or not isinstance(data.get("runs"), list):
            raise IsspError("lacks its command or its list of runs")
        if not isinstance(data.get("summary"), dict):
            raise IsspError("has no summary")
        rows = []
        for key, item in data["summary"].items():
            try:
                rows.append(study.SummaryRow.from_json(item))
            except IsspError as err:
                raise IsspError(f"summary row {echo(key)} {err}") from None
        planned = data.get("planned_runs")
        # type(), not isinstance(): JSON true/false arrive as bool, which Python counts as int.
        if planned is not None and type(planned) is not int:
            raise IsspError("has a planned_runs that is not a whole number")
        return cls(data["command"], len(data["runs"]), tuple(rows), planned)

    @property
    def metrics(self) -> list[str]:
        """The metrics the study scored, in the order the report lists them."""
        return list(dict.fromkeys(row.metric for row in self.rows))

    def rows_of(self, metric: str) -> list[study.SummaryRow]:
        """The rows of ``metric``, by scale and then ratio."""
        return sorted(
            (r for r in self.rows if r.metric == metric), key=lambda r: (r.scale, r.ratio)
        )


@dataclass(frozen=True)
class StudyPage:
    """What the tab shows: the verdicts (or why there are none), the figure, and the
    metric menu with the metric shown."""

    text: str
    figure: go.Figure | None
    choices: list[tuple[str, str]]  # (label, metric) for a dropdown
    metric: str | None


def load_study(path: Path = STUDY_JSON) -> StudySummary | None:
    """The study at ``path``, or None if none was written yet; a file that cannot be read
    or is no study report raises IsspError with a one-line message naming it."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        # ValueError covers invalid JSON and text that is not UTF-8; both say where.
        raise IsspError(f"{path} could not be read ({err})") from None
    try:
        return StudySummary.from_json(data)
    except IsspError as err:
        raise IsspError(f"{path} is not a study report: {err}") from None


def _sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation over seeds; None for one seed, which has no spread."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _hover_scores(values: Sequence[float]) -> str:
    """``29.00 ± 0.12 dB (mean ± sd over 3 seeds)``: a method's scores as the hover says them."""
    return f"{study.mean_sd(values, '.2f')} dB (mean ± sd over {study.seed_count(len(values))})"


def _translucent(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def _add_dense(figure: go.Figure, rows: list[study.SummaryRow], column: int) -> None:
    """The dense model's mean as a dashed line across the scale's ratios, its seed spread
    (mean ± sd) as a band behind it."""
    dense = rows[0].scores["dense"]
    if not dense:
        return
    ends = [rows[0].ratio - DENSE_MARGIN, rows[-1].ratio + DENSE_MARGIN]
    mean, sd = float(np.mean(dense)), _sd(dense)
    style = {"legendgroup": "dense", "showlegend": False}
    if sd is not None:
        figure.add_trace(
            go.Scatter(
                x=[*ends, *ends[::-1]],
                y=[mean + sd, mean + sd, mean - sd, mean - sd],
                fill="toself",
                fillcolor=_translucent(colour("dense"), 0.2),
                line={"width": 0},
                hoverinfo="skip",
                name=f"{label('dense')} ± sd",
                **style,
            ),
            1,
            column,
        )
    figure.add_trace(
        go.Scatter(
            x=ends,
            y=[mean, mean],
            mode="lines",
            line={"color": colour("dense"), "dash": "dash"},
            name=f"{label('dense')} (mean, band: ± sd over seeds)",
            hovertext=[f"{label('dense')}: {_hover_scores(dense)}"] * 2,
            hovertemplate="%{hovertext}<extra></extra>",
            **(style | {"showlegend": column == 1}),
        ),
        1,
        column,
    )


def _add_methods(figure: go.Figure, rows: list[study.SummaryRow], column: int) -> None:
    """ISS-P and IHT at their mean over seeds against ratio, error bars ± sd over seeds."""
    for method in COMPARED:
        points = [(row.ratio, row.scores[method]) for row in rows if row.scores[method]]
        figure.add_trace(
            go.Scatter(
                x=[ratio for ratio, _ in points],
                y=[float(np.mean(scores)) for _, scores in points],
                error_y={
                    "type": "data",
                    "array": [_sd(scores) for _, scores in points],
                    "visible": True,
                },
                mode="lines+markers",
                name=f"{label(method)} (mean, bars: ± sd over seeds)",
                legendgroup=method,
                showlegend=column == 1,
                line={"color": colour(method)},
                hovertext=[
                    f"{label(method)}, ratio {ratio:g}: {_hover_scores(scores)}"
                    for ratio, scores in points
                ],
                hovertemplate="%{hovertext}<extra></extra>",
            ),
            1,
            column,
        )


def _add_differences(figure: go.Figure, rows: list[study.SummaryRow], column: int) -> None:
    """Each seed's ISS-P minus IHT as an open dot (set a little left of its ratio so it
    does not hide under the mean), the mean with its 95% interval as error bars, and 0."""
    style = {"legendgroup": "difference", "showlegend": column == 1}
    seeds = [(row.ratio, d) for row in rows for d in row.differences]
    figure.add_trace(
        go.Scatter(
            x=[ratio - SEED_OFFSET for ratio, _ in seeds],
            y=[d for _, d in seeds],
            mode="markers",
            marker={"symbol": "circle-open", "color": colour("issp")},
            name=f"{DIFFERENCE}, one seed each",
            hovertext=[f"ratio {ratio:g}, one seed: {d:+.2f} dB" for ratio, d in seeds],
            hovertemplate="%{hovertext}<extra></extra>",
            **style,
        ),
        2,
        column,
    )
    means = [row for row in rows if row.mean_difference is not None]
    # One seed has no interval: its mean is drawn without a bar.
    above = [row.interval95[1] - row.mean_difference if row.interval95 else None for row in means]
    below = [row.mean_difference - row.interval95[0] if row.interval95 else None for row in means]
    figure.add_trace(
        go.Scatter(
            x=[row.ratio for row in means],
            y=[row.mean_difference for row in means],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": above,
                "arrayminus": below,
                "visible": True,
            },
            mode="markers",
            marker={"color": colour("issp"), "size": 9},
            name=f"{DIFFERENCE} (mean, bars: 95% interval)",
            hovertext=[study.verdict_sentence(row).replace("**", "") for row in means],
            hovertemplate="%{hovertext}<extra></extra>",
            **style,
        ),
        2,
        column,
    )
    figure.add_hline(y=0, line_dash="dot", line_color="grey", row=2, col=column)


def study_figure(summary: StudySummary, metric: str) -> go.Figure:
    """Two rows, one column per scale. Top: PSNR on ``metric`` against pruning ratio, ISS-P
    and IHT at their mean over seeds with error bars of the sample standard deviation over
    seeds, the dense model's mean as a dashed line with a band of ± its standard deviation.
    Bottom: the study's answer, ISS-P minus IHT per seed and its mean with the 95% interval
    that decides the verdict; the verdict is the hover text."""
    metric = check_choice(metric, "metric", summary.metrics)
    rows = summary.rows_of(metric)
    scales = sorted({row.scale for row in rows})
    figure = make_subplots(
        2,
        len(scales),
        shared_xaxes=True,
        row_heights=[0.6, 0.4],
        vertical_spacing=0.08,
        subplot_titles=[f"x{scale}" for scale in scales] + [""] * len(scales),
    )
    for column, scale in enumerate(scales, start=1):
        at_scale = [row for row in rows if row.scale == scale]
        _add_dense(figure, at_scale, column)
        _add_methods(figure, at_scale, column)
        _add_differences(figure, at_scale, column)
        figure.update_xaxes(title_text="pruning ratio", row=2, col=column)
    figure.update_yaxes(title_text="PSNR (dB, Y channel), mean ± sd over seeds", row=1, col=1)
    figure.update_yaxes(title_text=f"{DIFFERENCE} (dB)", row=2, col=1)
    figure.update_layout(
        title=f"{study.metric_label(metric)} PSNR of the paired-seed study",
        template="plotly_white",
        height=700,
    )
    return figure


def study_verdicts(summary: StudySummary, metric: str) -> str:
    """Markdown: where the numbers come from, then one sentence per scale and ratio with
    the study's verdict, the mean paired difference, its 95% interval and the wins."""
    metric = check_choice(metric, "metric", summary.metrics)
    rows = summary.rows_of(metric)
    counts = sorted({row.seeds for row in rows})
    if len(counts) == 1:
        seeds = f"{study.seed_count(counts[0])} per ratio"
    else:
        most = study.seed_count(counts[-1])
        seeds = f"{counts[0]} to {most} per ratio (not every run has finished)"
    finished = f"{summary.runs} runs"
    if summary.planned is not None:
        finished = f"{summary.runs} of {summary.planned} planned runs"
    header = (
        f"{study.metric_label(metric)} PSNR, {seeds}, {finished}; made by "
        f"`{summary.command}`. Each seed trains {label('issp')} and {label('iht')} from the "
        f"same weights on the same batches, so {label('issp')} minus {label('iht')} is a "
        "paired difference; the interval is the 95% t-interval of its mean, and the verdict "
        "says ahead or behind only where that interval excludes 0."
    )
    return "\n".join([header, "", *(f"- {study.verdict_sentence(row)}" for row in rows)])


def study_page(path: Path | None = STUDY_JSON, metric: str | None = None) -> StudyPage:
    """The tab's content: ``metric``'s verdicts and figure if the study scored it (else its
    first metric's); one line saying why where there is no study (or no ``path``) or it
    cannot be read."""
    try:
        summary = None if path is None else load_study(path)
    except IsspError as err:
        return StudyPage(f"**Paired-seed study:** {user_message(str(err))}", None, [], None)
    if summary is None:
        return StudyPage(NO_STUDY, None, [], None)
    if not summary.rows:
        return StudyPage("*The study has no pruned runs finished yet.*", None, [], None)
    shown = metric if metric in summary.metrics else summary.metrics[0]
    return StudyPage(
        study_verdicts(summary, shown),
        study_figure(summary, shown),
        [(study.metric_label(m), m) for m in summary.metrics],
        shown,
    )
