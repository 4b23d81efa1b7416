import numpy as np
from PIL import Image

from issp.study.claims_figure import FOREST, called_cells, claims_png, forest_panels
from issp.study.claims_report import claim_rows, claims_markdown
from tests.test_claims import make_results


def evidence_of(results):
    return {row.claim: row.evidence for row in claim_rows(results)}


def test_the_figure_has_a_panel_per_claim_with_cells_and_is_a_png(tmp_path):
    results = make_results(lambda cell: 0.5)
    evidence = evidence_of(results)
    panels = dict(forest_panels(evidence))
    # C2's evidence is two slopes over cells, not cells: it has no panel.
    assert set(panels) == set(FOREST) and "C2" not in panels
    assert {t["rival"] for t in panels["C6"]} == {"iht", "gmp", "rigl"}
    path = claims_png(evidence, tmp_path / "claims.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height > image.width / 2
        # Drawn, not blank: the intervals and markers are coloured.
        assert np.asarray(image.convert("L")).std() > 10


def test_the_figure_changes_only_when_the_evidence_does(tmp_path):
    evidence = evidence_of(make_results(lambda cell: 0.5))
    first = claims_png(evidence, tmp_path / "a.png").read_bytes()
    assert claims_png(evidence, tmp_path / "b.png").read_bytes() == first
    other = evidence_of(make_results(lambda cell: -0.5))
    assert claims_png(other, tmp_path / "c.png").read_bytes() != first


def test_no_called_cell_means_no_figure_and_an_old_one_goes(tmp_path):
    stale = tmp_path / "claims.png"
    stale.write_bytes(b"an older figure")
    assert claims_png({"C1": [], "C2": [{"part": "ratio", "mean": 0.1}]}, stale) is None
    assert not stale.exists()


def test_only_per_cell_comparisons_are_drawn():
    entries = [
        {"cell": "edsr-tiny x2 0.9", "rival": "iht", "mean": 0.1},
        {"cell": "edsr-tiny x2 0.9", "rival": "iht", "reported": "layer_spread"},
        {"part": "mean over both cells", "mean": 0.2},
    ]
    assert called_cells(entries) == entries[:1]


def test_the_report_links_the_figure_beside_it(tmp_path):
    results = make_results(lambda cell: 0.5)
    rows = claim_rows(results)
    path = claims_png(evidence_of(results), tmp_path / "claims.png")
    assert "](claims.png)" in claims_markdown(rows, results, "cmd", figure=path)
    assert "](claims.png)" not in claims_markdown(rows, results, "cmd")
