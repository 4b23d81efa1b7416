"""The zoo's stored telemetry loaded as dynamics (analysis.stored)."""

import pytest
from fixtures import stored_manifest, write_stored_run

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


def test_stored_runs_say_how_their_own_zoo_trained_them(tmp_path):
    for method in ("issp", "iht"):
        write_stored_run(tmp_path, method, 0.9)
    manifest = stored_manifest(0.9, prune_steps=3, lr=2e-4)
    pair = load_stored("edsr-tiny", 2, 0.9, directory=tmp_path, manifest=manifest)
    assert pair.config["prune_steps"] == 3 and pair.config["alpha"] == 0.5
    loss = FIGURES["loss"](pair)
    rate = [t for t in loss.data if t.name == "learning rate"][0]
    assert len(rate.y) == 5 and rate.y[0] == 2e-4
    # The runs were validated once, at their last step: the panel says so.
    assert "validated at step 5 only" in [note.text for note in loss.layout.annotations]


def test_a_run_whose_zoo_recorded_no_schedule_says_so(tmp_path):
    for method in ("issp", "iht"):
        write_stored_run(tmp_path, method, 0.9)
    manifest = stored_manifest(0.9, prune_steps=3, lr=None)
    pair = load_stored("edsr-tiny", 2, 0.9, directory=tmp_path, manifest=manifest)
    loss = FIGURES["loss"](pair)
    assert not [t for t in loss.data if t.name == "learning rate"]
    assert "not recorded for this run" in [note.text for note in loss.layout.annotations]
