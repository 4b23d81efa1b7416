"""The Results tab's paired-seed study (webapp.study_view), read from a study.json written
by issp.study's own writer so that the view and the report cannot drift apart."""

import json

import numpy as np
import pytest
from fixtures import STUDY_COMMAND as COMMAND
from fixtures import STUDY_SET5 as SET5
from fixtures import study_runs

from issp import IsspError
from issp.methods import COMPARED, colour
from issp.study import write_study
from webapp import study_view


@pytest.fixture
def study(tmp_path):
    write_study(study_runs(), ["set5", "val"], COMMAND, tmp_path)
    return tmp_path / "study.json"


def test_figure_shows_each_method_at_its_seed_mean_with_the_seed_sd_as_error_bars(study):
    summary = study_view.load_study(study)
    figure = study_view.study_figure(summary, "set5")
    # make_subplots names the first subplot's x axis "x" and the second "x2".
    for axis, scale in (("x", 2), ("x2", 4)):
        for method in COMPARED:
            (trace,) = [t for t in figure.data if t.xaxis == axis and t.legendgroup == method]
            cells = [(ratio, m[method]) for (s, ratio), m in SET5.items() if s == scale and ratio]
            assert list(trace.x) == [ratio for ratio, _ in cells]
            assert list(trace.y) == pytest.approx([np.mean(scores) for _, scores in cells])
            sds = [np.std(scores, ddof=1) if len(scores) > 1 else None for _, scores in cells]
            assert list(trace.error_y.array) == pytest.approx(sds)
            assert trace.line.color == colour(method)
            assert "sd over seeds" in trace.name
        (dense,) = [
            t for t in figure.data if t.xaxis == axis and t.legendgroup == "dense" and not t.fill
        ]
        mean = np.mean(SET5[(scale, 0.0)]["dense"])
        assert list(dense.y) == pytest.approx([mean, mean])
        assert dense.line.color == colour("dense")
    hover = next(t for t in figure.data if t.xaxis == "x2" and t.legendgroup == "iht").hovertext
    assert hover == ("IHT, ratio 0.9: 29.00 dB (mean ± sd over 1 seed)",)
    assert "sd over seeds" in figure.layout.yaxis.title.text


def test_figure_shows_each_seeds_paired_difference_and_the_interval_that_decides(study):
    summary = study_view.load_study(study)
    figure = study_view.study_figure(summary, "set5")
    # The second row's subplots: x2 in "x3", x4 in "x4".
    for axis, scale in (("x3", 2), ("x4", 4)):
        seeds, mean = [t for t in figure.data if t.xaxis == axis and t.legendgroup == "difference"]
        rows = [row for row in summary.rows_of("set5") if row.scale == scale]
        differences = [
            (ratio, issp - iht)
            for (s, ratio), m in SET5.items()
            if s == scale and ratio
            for issp, iht in zip(m["issp"], m["iht"], strict=False)
        ]
        assert list(seeds.x) == pytest.approx([r - study_view.SEED_OFFSET for r, _ in differences])
        assert list(seeds.y) == pytest.approx([d for _, d in differences])
        assert list(mean.x) == [row.ratio for row in rows]
        assert list(mean.y) == pytest.approx([row.mean_difference for row in rows])
        for row, up, down in zip(rows, mean.error_y.array, mean.error_y.arrayminus, strict=True):
            if row.interval95 is None:
                assert up is None and down is None
            else:
                assert row.mean_difference + up == pytest.approx(row.interval95[1])
                assert row.mean_difference - down == pytest.approx(row.interval95[0])
    x2_mean = next(t for t in figure.data if t.xaxis == "x3" and "95% interval" in t.name)
    assert x2_mean.hovertext[0].startswith("x2, ratio 0.9: ISS-P ahead — ISS-P minus IHT +0.30")
    zero_lines = [shape for shape in figure.layout.shapes if shape.y0 == 0 == shape.y1]
    assert len(zero_lines) == 2


def test_verdicts_say_ahead_behind_and_tie_as_the_study_decided(study):
    text = study_view.study_verdicts(study_view.load_study(study), "set5")
    lines = text.splitlines()
    assert lines[0].startswith("Set5 PSNR, 1 to 3 seeds per ratio (not every run has finished)")
    assert f"`{COMMAND}`" in lines[0] and f"{len(study_runs())} runs" in lines[0]
    write_study(study_runs(), ["set5"], COMMAND, study.parent, planned=42)
    header = study_view.study_verdicts(study_view.load_study(study), "set5").splitlines()[0]
    assert f"{len(study_runs())} of 42 planned runs" in header
    assert lines[2:] == [
        "- x2, ratio 0.9: **ISS-P ahead** — ISS-P minus IHT +0.30 dB "
        "(95% interval +0.28 to +0.32), ISS-P won 3 of 3 seeds.",
        "- x2, ratio 0.95: **tie** — ISS-P minus IHT +0.13 dB "
        "(95% interval −1.04 to +1.31), ISS-P won 2 of 3 seeds.",
        "- x2, ratio 0.99: **ISS-P behind** — ISS-P minus IHT −0.30 dB "
        "(95% interval −0.32 to −0.28), ISS-P won 0 of 3 seeds.",
        "- x4, ratio 0.9: **too few seeds** — ISS-P minus IHT +0.20 dB "
        "(the 95% interval needs at least two seeds), ISS-P won 1 of 1 seed.",
    ]


def test_page_offers_the_study_metrics_and_says_in_one_line_when_there_is_no_study(study, tmp_path):
    assert study_view.load_study(tmp_path / "missing.json") is None
    empty = study_view.study_page(tmp_path / "missing.json", "set5")
    assert (empty.text, empty.figure, empty.choices) == (study_view.NO_STUDY, None, [])
    assert "\n" not in empty.text

    page = study_view.study_page(study, "val")
    assert page.choices == [("Set5", "set5"), ("validation", "val")]
    assert page.metric == "val" and page.text.startswith("validation PSNR")
    assert study_view.study_page(study, "set14").metric == "set5"
    with pytest.raises(IsspError, match="metric must be one of set5, val"):
        study_view.study_figure(study_view.load_study(study), "set14")


def test_a_corrupt_or_malformed_study_is_one_line_naming_the_file(study, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"command": "python -m issp study run", "summ')
    with pytest.raises(IsspError, match=r"broken\.json could not be read") as err:
        study_view.load_study(broken)
    assert "\n" not in str(err.value)

    data = json.loads(study.read_text())
    data["summary"]["x2 r0.9 set5"]["issp"] = "35.3"
    study.write_text(json.dumps(data))
    message = "study.json is not a study report: summary row 'x2 r0.9 set5' has no list of issp"
    with pytest.raises(IsspError, match=message) as err:
        study_view.load_study(study)
    assert "\n" not in str(err.value)
    # The tab shows the problem in place of the study, without the server's folders.
    page = study_view.study_page(study)
    assert page.figure is None and str(tmp_path) not in page.text
    assert page.text.startswith("**Paired-seed study:** study.json is not a study report")

    write_study(study_runs(), ["set5"], COMMAND, study.parent)
    data = json.loads(study.read_text())
    del data["summary"]["x2 r0.95 set5"]["differences"]
    study.write_text(json.dumps(data))
    with pytest.raises(IsspError, match="'x2 r0.95 set5' has no list of paired differences"):
        study_view.load_study(study)

    write_study(study_runs(), ["set5"], COMMAND, study.parent)
    data = json.loads(study.read_text())
    data["planned_runs"] = "42"
    study.write_text(json.dumps(data))
    with pytest.raises(IsspError, match="planned_runs that is not a whole number"):
        study_view.load_study(study)
