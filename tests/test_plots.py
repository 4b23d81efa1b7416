"""Figures of pruning dynamics (analysis.plots), as plotly figures and as PNG + HTML files."""

import numpy as np
import plotly.graph_objects as go
import pytest
from fixtures import tiny_lockstep

from analysis.figure_files import save_figures
from analysis.lockstep import run_to_end
from analysis.plots import FIGURES, MAX_POINTS, binned
from issp.methods import colour

pytestmark = pytest.mark.usefixtures("one_thread")


def test_figures_build_and_save_as_png_and_offline_html(issp_vs_iht, tmp_path):
    for build in FIGURES.values():
        assert isinstance(build(issp_vs_iht), go.Figure)
    paths = save_figures(issp_vs_iht, tmp_path)
    assert {p.name for p in paths} == {f"{name}.png" for name in FIGURES} | {"dynamics.html"}
    assert all(p.stat().st_size > 1000 for p in paths)
    page = (tmp_path / "dynamics.html").read_text()
    assert "<script src=" not in page and "Mask entries flipped" in page


def test_long_series_are_binned_for_display():
    steps, values = binned(np.arange(5000.0))
    assert len(steps) <= MAX_POINTS and len(values) == len(steps)
    assert values[0] == pytest.approx(steps[0] - 1)
    _, layered = binned(np.ones((4321, 3)))
    assert layered.shape[1] == 3 and len(layered) <= MAX_POINTS


def test_loss_figure_shows_the_two_stage_learning_rate(photos):
    final = run_to_end(
        tiny_lockstep(photos, protocol="two-stage", lr=2e-4, steps=12, prune_steps=3)
    )
    rate = [t for t in FIGURES["loss"](final).data if t.name == "learning rate"][0]
    assert len(rate.y) == 12
    # Constant while pruning, the full rate again when fine-tuning starts, then halved.
    assert list(rate.y[:3]) == [2e-4] * 3 and rate.y[3] == 2e-4 and rate.y[-1] == 1e-4


def test_each_method_is_drawn_in_its_one_colour(issp_vs_iht):
    traces = [t for t in FIGURES["loss"](issp_vs_iht).data if t.legendgroup]
    drawn = {(t.legendgroup, t.line.color) for t in traces}
    assert drawn == {("issp", colour("issp")), ("iht", colour("iht"))}
