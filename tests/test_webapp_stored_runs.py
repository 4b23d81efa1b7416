"""The Stored dynamics tab (webapp.stored_runs)."""

import plotly.graph_objects as go
import pytest
from fixtures import stored_manifest, write_stored_run

from analysis.plots import FIGURES
from issp import IsspError
from issp.catalogue import Manifest
from webapp import stored_runs


def test_stored_tab_without_telemetry_says_so(tmp_path):
    assert stored_runs.stored_choices(tmp_path) == []
    view = stored_runs.stored_view(tmp_path / "missing", None, Manifest())
    assert "No stored dynamics yet" in view.status
    assert view.figures == (None,) * len(FIGURES)


def test_stored_tab_draws_a_stored_pair_with_its_dense_run(tmp_path):
    for method, ratio in (("issp", 0.9), ("iht", 0.9), ("dense", 0.0)):
        write_stored_run(tmp_path, method, ratio)
    assert stored_runs.stored_choices(tmp_path) == ["edsr-tiny x2, ratio 0.9"]
    view = stored_runs.stored_view(tmp_path, None, Manifest())
    assert all(isinstance(f, go.Figure) for f in view.figures)
    assert "Mask entries flipped: ISS-P" in view.status and "dense 0" in view.status
    with pytest.raises(IsspError, match="no stored run"):
        stored_runs.stored_view(tmp_path, "edsr-tiny x4, ratio 0.5", Manifest())


def test_stored_tab_reads_the_manifest_of_the_zoo_it_shows(tmp_path):
    for method in ("issp", "iht"):
        write_stored_run(tmp_path, method, 0.9)
    view = stored_runs.stored_view(tmp_path, None, stored_manifest(0.9, prune_steps=4, lr=1e-3))
    assert "Kp = 4:" in view.status and "alpha 0.5" in view.status
