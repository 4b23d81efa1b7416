import json

import pytest

from issp import IsspError
from issp.study import alpha_edge, v2
from issp.study.claims_report import checks_markdown
from issp.study.v2 import GRID_RATIOS, GRID_SEEDS, Grid


def grid_score(config) -> float:
    """Validation PSNR of a study v2 grid run: ISS-P peaks at lr 3e-3 and alpha 0.99."""
    value = 31.0 - abs(config.lr - 3e-3) * 200 + config.seed * 0.01
    if config.method == "issp":
        value += {0.9: -0.1, 0.95: -0.05, 0.99: 0.0}[config.alpha]
    return value


@pytest.fixture
def grid_done() -> dict:
    """Study v2's edsr-tiny grid of ISS-P, run to its choice (lr 3e-3, alpha 0.99)."""
    done: dict = {}
    grid = Grid(v2.EDSR, done, None, v2.precision_of(v2.EDSR))
    while runs := grid.next_runs(("issp",)):
        for run in runs:
            done[run.name] = {"val_psnr": grid_score(run.config)}
    return done


def finish(runs, psnr: float) -> dict:
    return {run.name: {"val_psnr": psnr, "train_seconds": 1.0} for run in runs}


def test_the_first_alpha_beyond_runs_at_the_chosen_rate_on_the_grid_seeds_and_ratios(grid_done):
    runs = alpha_edge.next_runs(grid_done, {}, None)
    configs = [run.config for run in runs]
    assert {(c.alpha, c.lr, c.method) for c in configs} == {(0.995, 3e-3, "issp")}
    assert sorted((c.seed, c.ratio) for c in configs) == sorted(
        (seed, ratio) for seed in GRID_SEEDS for ratio in GRID_RATIOS
    )
    # The same runs study v2's grid would train, but for alpha: same steps and arithmetic.
    registered = alpha_edge.alpha_runs(3e-3, 0.99, None)[0]
    assert registered.name in grid_done
    assert configs[0].steps == registered.config.steps
    assert configs[0].precision == registered.config.precision


def test_an_alpha_that_loses_ends_the_check_and_the_edge_did_not_bind(grid_done):
    done = finish(alpha_edge.next_runs(grid_done, {}, None), 30.0)
    assert alpha_edge.next_runs(grid_done, done, None) == []
    result = alpha_edge.summary(grid_done, done, None)
    assert result["complete"] and result["scores"][0.999] is None
    assert result["reading"].endswith("its edge did not bind")
    # Per seed, minus alpha 0.99's mean over the two ratios.
    expected = [30.0 - (31.0 + seed * 0.01) for seed in GRID_SEEDS]
    assert result["per_seed"][0.995]["differences"] == pytest.approx(expected)


def test_an_alpha_that_wins_asks_for_the_next_and_the_best_is_named(grid_done):
    done = finish(alpha_edge.next_runs(grid_done, {}, None), 33.0)
    next_up = alpha_edge.next_runs(grid_done, done, None)
    assert {run.config.alpha for run in next_up} == {0.999}
    assert alpha_edge.summary(grid_done, done, None)["reading"] == "not complete yet"
    done |= finish(next_up, 32.5)
    result = alpha_edge.summary(grid_done, done, None)
    assert result["complete"]
    gain = 33.0 - (31.0 + sum(GRID_SEEDS) * 0.01 / len(GRID_SEEDS))
    assert result["reading"] == (
        f"alpha 0.995 scores {gain:+.3f} dB above 0.99 on validation; "
        "the registered grid's edge bound ISS-P"
    )


def test_a_diverged_alpha_loses(grid_done):
    done = finish(alpha_edge.next_runs(grid_done, {}, None), float("nan"))
    assert alpha_edge.next_runs(grid_done, done, None) == []
    assert alpha_edge.summary(grid_done, done, None)["reading"].endswith("did not bind")


def test_the_check_waits_for_study_v2s_choice():
    with pytest.raises(IsspError, match="has not chosen"):
        alpha_edge.next_runs({}, {}, None)


def test_the_report_keeps_its_registered_part(tmp_path, grid_done, monkeypatch):
    report = tmp_path / "alpha-edge.md"
    report.write_text("# Registered\n\nthe rules\n\n## Results\n\nNot run yet.\n")
    done = finish(alpha_edge.next_runs(grid_done, {}, None), 30.0)
    monkeypatch.setattr(
        v2, "finished", lambda folders: done if "alpha" in str(folders.results) else grid_done
    )
    result = alpha_edge.write("python -m issp study alpha-edge --report", tmp_path)
    text = report.read_text()
    assert text.startswith("# Registered\n\nthe rules\n\n## Results") and "Not run yet" not in text
    assert f"**{result['reading']}**" in text
    assert "| 0.995 | 30.000 | this check |" in text
    assert json.loads((tmp_path / "alpha-edge.json").read_text())["scores"]["0.995"] == 30.0


def test_the_claims_report_points_to_the_checks_reading(tmp_path):
    assert checks_markdown(tmp_path) == ""  # no check has run: nothing to point to
    reading = "the registered choice is the best of the extended grid; its edge did not bind"
    (tmp_path / "alpha-edge.json").write_text(json.dumps({"reading": reading}))
    assert f"(`analysis/alpha-edge.md`): {reading}." in checks_markdown(tmp_path)
