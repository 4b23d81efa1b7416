"""The zoo's stored telemetry loaded as dynamics (analysis.stored)."""

import pytest
from fixtures import write_stored_run

from analysis.plots import FIGURES
from analysis.stored import list_stored, load_stored, stored_pairs
from issp import IsspError


def test_stored_runs_load_as_a_pair_and_plot(tmp_path):
    for method in ("issp", "iht"):
        write_stored_run(tmp_path, method, 0.9)
    write_stored_run(tmp_path, "issp", 0.5)
    (tmp_path / "notes.npz").write_bytes(b"")
    assert [r.name for r in list_stored(tmp_path)] == [
        "edsr-tiny_x2_iht_r0.9",
        "edsr-tiny_x2_issp_r0.5",
        "edsr-tiny_x2_issp_r0.9",
    ]
    assert stored_pairs(tmp_path) == [("edsr-tiny", 2, 0.9)]
    pair = load_stored("edsr-tiny", 2, 0.9, directory=tmp_path)
    assert set(pair.series) == {"issp", "iht"} and pair.step == 5 and pair.finished
    assert pair.series["issp"].flips.shape == (5, len(pair.layers))
    for build in FIGURES.values():
        build(pair)
    with pytest.raises(IsspError, match="no stored telemetry"):
        load_stored("edsr-tiny", 2, 0.5, directory=tmp_path)
