"""The Results tab's text, table and chart (webapp.results)."""

import pytest

from issp import IsspError
from issp.catalogue import Manifest
from issp.methods import colour
from webapp import results
from webapp.model_zoo import ModelZoo


def test_results_figure_copes_with_empty_partial_and_full_zoos(fake_zoo):
    empty = results.results_figure(Manifest())
    assert len(empty.data) == 0
    assert "no stored Set5 scores yet" in empty.layout.annotations[0].text

    manifest = ModelZoo(fake_zoo).manifest()
    full = results.results_figure(manifest, "nonzeros")
    names = sorted(trace.name for trace in full.data)
    assert names == [f"edsr-tiny x{s} {m}" for s in (2, 4) for m in ("IHT", "ISS-P")]
    assert full.layout.xaxis.type == "log"
    # Colour means the method, the same on every tab and figure; dashes tell the models.
    for trace in full.data:
        assert trace.line.color == colour("issp" if "ISS-P" in trace.name else "iht")

    dense_only = Manifest([r for r in manifest.checkpoints if r.method == "dense"])
    assert [t.name for t in results.results_figure(dense_only).data] == [
        "edsr-tiny x2 dense",
        "edsr-tiny x4 dense",
    ]
    assert len(results.results_figure(manifest, test_set="set14").data) == 0
    with pytest.raises(IsspError, match="x axis must be"):
        results.results_figure(manifest, "flops")


def test_results_tab_text(fake_zoo, tmp_path):
    manifest = ModelZoo(fake_zoo).manifest()
    rows = results.manifest_rows(manifest)
    assert len(rows) == 10 and list(rows[0]) == list(results.MANIFEST_COLUMNS)
    assert results.results_text(tmp_path / "missing.md") is None
    text = results.provenance(manifest, None)
    assert "python -m issp zoo build" in text and "cpu (fake zoo for tests)" in text
    table = tmp_path / "results.md"
    table.write_text("| model |\n|---|\n")
    assert results.results_text(table) == "| model |\n|---|\n"
    assert "No results table" not in results.provenance(manifest, table)
