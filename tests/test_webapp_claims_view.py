import json

import pytest

from issp.study.claims import CELLS
from issp.study.claims_report import cell_means, claim_rows, claims_json, notes
from webapp.claims_view import NO_CLAIMS, claims_page


def test_the_claims_table_has_every_claim_and_its_verdict_in_words(tmp_path):
    rows = claim_rows([])
    means = cell_means([])
    report = {"claims": claims_json(rows), "notes": notes(rows), "runs": 12, "planned": 70}
    report["cell_means"] = means
    (tmp_path / "claims.json").write_text(json.dumps(report))
    page = claims_page(tmp_path / "study.json")
    assert "12 study runs finished, of the 70 that the grid's choices so far call for" in page.text
    assert "\n".join(means) in page.text and "| edsr-tiny x2 0.9 | - |" in page.text
    assert "- C6 is pending: it waits for GMP and RigL on edsr-tiny (phase 2)." in page.text
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6"):
        assert f"| {claim} |" in page.text
    assert "**pending**" in page.text and set(page.evidence) == {f"C{k}" for k in range(1, 7)}


def test_no_claims_file_or_a_damaged_one_says_so(tmp_path):
    assert claims_page(None).text == NO_CLAIMS
    assert claims_page(tmp_path / "study.json").text == NO_CLAIMS
    (tmp_path / "claims.json").write_text('{"claims": [{"claim": "C1"}]}')
    assert "cannot be read" in claims_page(tmp_path / "study.json").text
    rows = claims_json(claim_rows([]))
    (tmp_path / "claims.json").write_text(json.dumps({"claims": rows, "notes": 3}))
    assert "cannot be read" in claims_page(tmp_path / "study.json").text


def test_the_forest_plot_draws_each_cell_s_interval_and_its_call(tmp_path):
    from test_claims import make_results  # the claims tests' synthetic run files

    first = CELLS[0]
    results = make_results(lambda cell: 0.3, rivals={(first, "rigl"): 0.6})
    rows = claim_rows(results)
    (tmp_path / "claims.json").write_text(json.dumps({"claims": claims_json(rows)}))
    figure = claims_page(tmp_path / "study.json").figure
    titles = [a.text for a in figure.layout.annotations]
    assert [t.split(":")[0] for t in titles] == ["C1", "C3", "C4", "C5", "C6"]
    c6 = [trace for trace in figure.data if trace.xaxis == "x5"]
    assert [trace.name for trace in c6] == ["vs IHT", "vs GMP", "vs RigL"]
    # the legend names each rival by its colour and each call by its shape, whatever the
    # first cell's call (a data trace's legend would show its first marker)
    legend = {t.name: t.marker.symbol for t in figure.data if t.showlegend is not False}
    assert legend == {
        "vs IHT": "square",
        "vs GMP": "square",
        "vs RigL": "square",
        "ISS-P ahead": "circle",
        "tie": "circle-open",
        "ISS-P behind": "x",
    }
    rigl = c6[2]
    assert rigl.customdata[0][0] == first.label and rigl.marker.symbol[0] == "x"  # RigL ahead
    assert all(symbol == "circle" for symbol in c6[0].marker.symbol)  # ahead of IHT everywhere
    test = next(t for t in rows[0].evidence if t["cell"] == first.label)
    c1 = figure.data[0]
    assert c1.x[0] == test["mean"]
    assert c1.x[0] + c1.error_x.array[0] == pytest.approx(test["interval95"][1])
    (tmp_path / "claims.json").write_text(json.dumps({"claims": claims_json(claim_rows([]))}))
    assert claims_page(tmp_path / "study.json").figure is None  # nothing called yet


def test_damaged_evidence_costs_the_plot_not_the_table(tmp_path):
    from test_claims import make_results

    rows = claims_json(claim_rows(make_results(lambda cell: 0.3)))
    del rows[0]["evidence"][0]["interval95"]
    (tmp_path / "claims.json").write_text(json.dumps({"claims": rows}))
    page = claims_page(tmp_path / "study.json")
    assert page.figure is None and "evidence cannot be plotted (KeyError)" in page.text
    assert "| C1 | better PSNR than IHT | **supported** |" in page.text
