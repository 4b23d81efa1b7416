import dataclasses
import json
import math

import pytest
from PIL import Image

from issp import IsspError, study
from issp.cli import main
from issp.study import (
    PRECISION,
    PROTOCOL,
    STEPS,
    PairedDifferences,
    SummaryRow,
    choose_protocol,
    issp_minus_iht,
    promising_lrs,
    seed_run,
    study_goals,
    study_plan,
    study_summary,
)


def result(scale, method, ratio, seed, set5, lr=1e-4, alpha=0.95, val=30.0, edges=True):
    config = {
        "scale": scale,
        "method": method,
        "ratio": ratio,
        "seed": seed,
        "lr": lr,
        "alpha": alpha,
        "protocol": "two-stage",
        "prune_edges": edges,
    }
    return {
        "name": f"{method}_{ratio}_{seed}_{lr}_{alpha}",
        "config": config,
        "set5": {"psnr": set5, "ssim": 0.9},
        "val_psnr": val,
        "train_seconds": 1.0,
        "device": "cpu",
    }


def test_paired_interval_is_the_t_interval_of_the_mean_difference():
    pair = PairedDifferences((0.1, 0.2, 0.3))
    low, high = pair.interval
    # t(0.975, 2) = 4.3027; sd = 0.1; half-width = 4.3027 * 0.1 / sqrt(3).
    assert pair.mean == pytest.approx(0.2)
    assert high - pair.mean == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-4)
    assert low == pytest.approx(0.2 - 0.24842, abs=1e-4)
    assert pair.verdict == "tie" and pair.wins == 3


def test_verdict_is_ahead_or_behind_only_when_the_interval_excludes_zero():
    assert PairedDifferences((0.30, 0.31, 0.29)).verdict == "ISS-P ahead"
    assert PairedDifferences((-0.30, -0.31, -0.29)).verdict == "ISS-P behind"
    assert PairedDifferences((0.5, -0.4, 0.3)).verdict == "tie"
    assert PairedDifferences((0.5,)).verdict == "too few seeds"


def test_paired_differences_match_seeds_and_skip_unpaired_runs():
    results = [
        result(2, "issp", 0.9, 0, 35.2),
        result(2, "iht", 0.9, 0, 35.0),
        result(2, "issp", 0.9, 1, 35.0),
        result(2, "iht", 0.9, 1, 35.1),
        result(2, "issp", 0.9, 2, 35.5),  # IHT of seed 2 unfinished: no pair
        result(2, "iht", 0.95, 0, 20.0),  # another ratio
    ]
    pair = issp_minus_iht(results, 2, 0.9, "set5")
    assert pair.differences == pytest.approx((0.2, -0.1))
    row = study_summary(results, ["set5"])["x2 r0.9 set5"]
    assert row.seeds == 2 and row.issp_wins == 1 and row.verdict == "tie"


def test_a_summary_row_reads_back_from_study_json_as_it_was_written():
    results = [
        result(2, method, ratio, seed, score)
        for seed, gain in enumerate((0.1, 0.3, 0.2))
        for method, ratio, score in (("issp", 0.9, 35 + gain), ("iht", 0.9, 35), ("dense", 0, 36))
    ]
    results += [result(2, "issp", 0.95, 0, 34.0), result(2, "iht", 0.95, 0, 34.1)]  # one seed
    summary = study_summary(results, ["set5"])
    for row in summary.values():
        assert SummaryRow.from_json(json.loads(json.dumps(row.to_json()))) == row
    assert summary["x2 r0.9 set5"].p_holm is not None
    assert "p_holm" not in summary["x2 r0.95 set5"].to_json()  # no p to adjust


def test_goals_are_checked_on_set5_means_and_wait_for_their_runs():
    results = [
        result(2, "issp", 0.95, 0, 35.0),
        result(2, "iht", 0.95, 0, 35.2),
        result(2, "issp", 0.95, 1, 35.3),
        result(2, "iht", 0.95, 1, 35.0),  # mean paired difference +0.05
        result(2, "issp", 0.9, 0, 36.0),
        result(2, "dense", 0.0, 0, 36.6),  # 0.6 dB gap, and below 36.8
        result(2, "issp", 0.9, 1, 30.0),  # no dense run of seed 1 to pair it with
    ]
    goals = {goal.text: goal for goal in study_goals(results)}
    assert goals["x2 r0.95: ISS-P − IHT, mean paired"].figure == pytest.approx(0.05)
    assert goals["x2 r0.95: ISS-P − IHT, mean paired"].met is True
    assert goals["x2 r0.95: ISS-P − IHT, mean paired"].seeds == 2
    assert goals["x2 r0.9: ISS-P − dense, mean paired"].figure == pytest.approx(-0.6)
    assert goals["x2 r0.9: ISS-P − dense, mean paired"].met is False
    assert goals["x2 r0.9: ISS-P − dense, mean paired"].seeds == 1
    assert goals["x2 dense Set5 PSNR, mean"].met is False
    assert goals["x4 r0.99: ISS-P − IHT, mean paired"].met is None  # not run yet
    assert len(goals) == 8


def test_readme_verdict_says_each_ratio_in_words_with_its_interval():
    results = [
        result(2, method, 0.95, seed, score)
        for seed, gain in enumerate((0.30, 0.31, 0.29))
        for method, score in (("issp", 35.0 + gain), ("iht", 35.0))
    ]
    results.append(result(2, "issp", 0.99, 0, 33.0))
    results.append(result(2, "iht", 0.99, 0, 33.1))
    text = study.verdict_markdown(results, ["set5"], "cmd", planned=12)
    assert "From `cmd`, 8 of 12 runs on cpu" in text
    assert "Set5 PSNR:" in text
    assert (
        "- x2, ratio 0.95: **ISS-P ahead** — ISS-P minus IHT +0.30 dB "
        "(95% interval +0.28 to +0.32), ISS-P won 3 of 3 seeds." in text
    )
    assert (
        "- x2, ratio 0.99: **too few seeds** — ISS-P minus IHT −0.10 dB "
        "(the 95% interval needs at least two seeds), ISS-P won 0 of 1 seed." in text
    )
    assert "| x2 r0.95: ISS-P − IHT, mean paired ≥ 0 dB | 0.300 dB | 3 | met |" in text
    goal = "| x2 r0.99: ISS-P − IHT, mean paired ≥ 0 dB | -0.100 dB | 1 | not met on 1 seed |"
    assert goal in text


def test_flips_are_compared_seed_by_seed_from_each_run_s_dynamics():
    results = []
    for seed, (iht, issp) in enumerate([(100, 300), (200, 150)]):
        for method, flips in (("iht", iht), ("issp", issp)):
            run = result(2, method, 0.9, seed, 35.0)
            run["dynamics"] = {
                "flips_before_kp": flips,
                "flips_last_fifth": flips / 10,
                "selected_over_kept": 0.0 if method == "iht" else 0.25,
            }
            results.append(run)
    text = "\n".join(study.flips_markdown(results))
    assert "| x2 | 0.9 | 150 ± 71 | 225 ± 106 | 1 of 2 | 15 ± 7 | 22 ± 11 | 0.2500 |" in text
    assert study.flips_markdown([result(2, "iht", 0.9, 0, 35.0)]) == []  # no telemetry


def test_study_pairs_differ_only_in_the_pruning_rule():
    runs = study_plan("two-stage", {2: 100, 4: 100}, None, seeds=(0, 1))
    by_key = {(r.config.scale, r.config.seed, r.config.ratio, r.config.method): r for r in runs}
    for (scale, seed, ratio, method), run in by_key.items():
        if method == "issp":
            iht = by_key[(scale, seed, ratio, "iht")].config
            assert dataclasses.replace(run.config, method="iht") == iht
    assert len({r.name for r in runs}) == len(runs) == 2 * 2 * (3 * 2 + 1)


def test_seed_run_is_the_study_s_own_run_and_extends_it_to_other_ratios():
    plan = {r.name: r for r in study_plan(PROTOCOL, STEPS, "data", seeds=(0,))}
    for name, run in plan.items():
        config = run.config
        assert seed_run(config.scale, config.method, config.ratio, "data") == plan[name]
    studied = seed_run(4, "issp", 0.9, "data")
    assert studied.name in plan
    assert seed_run(4, "issp", 0.5, "data").config == dataclasses.replace(studied.config, ratio=0.5)


def test_study_run_trains_the_study_s_steps_and_precision_unless_told(
    monkeypatch, tmp_path, capsys
):
    planned = []

    def execute(runs, folders, tests, jobs, threads):
        planned.append(runs)
        return []

    monkeypatch.setattr(study, "execute", execute)
    out = ["--work", str(tmp_path), "--out", str(tmp_path)]
    assert main(["study", "run", *out]) == 2  # nothing finished, after planning
    assert planned[0] == study.default_plan(None)
    configs = [run.config for run in planned[0]]
    assert {(c.scale, c.steps) for c in configs} == set(STEPS.items())
    assert {c.precision for c in configs} == {PRECISION}
    assert {c.protocol for c in configs} == {PROTOCOL}
    assert main(["study", "run", "--scales", "2", "--precision", "bf16", *out]) == 2
    assert {(c.scale, c.steps, c.bf16) for c in (r.config for r in planned[1])} == {
        (2, STEPS[2], True)
    }
    capsys.readouterr()
    assert main(["study", "run", "--scales", "3", *out]) == 2
    assert "give --steps for x3 (defaults for x2, x4 only)" in capsys.readouterr().err
    assert main(["study", "run", "--scales", "2,4", "--steps", "10", *out]) == 2
    assert "give one --steps value per scale (2)" in capsys.readouterr().err
    assert len(planned) == 2


def test_grid_picks_the_learning_rate_by_both_methods_not_by_issp_alone():
    # At lr 1e-3 ISS-P is best but IHT collapses; at 1e-4 both are good. The other alphas
    # run only at the chosen rate, and their scores do not move the choice of rate.
    results = [
        result(2, "issp", 0.9, 0, 0, lr=1e-3, alpha=0.95, val=31.0),
        result(2, "iht", 0.9, 0, 0, lr=1e-3, val=25.0),
        result(2, "issp", 0.9, 0, 0, lr=1e-4, alpha=0.95, val=30.5),
        result(2, "issp", 0.9, 0, 0, lr=1e-4, alpha=0.9, val=20.0),
        result(2, "issp", 0.9, 0, 0, lr=1e-4, alpha=0.99, val=30.8),
        result(2, "iht", 0.9, 0, 0, lr=1e-4, val=30.4),
    ]
    choice = choose_protocol(results, reference_alpha=0.95)
    assert choice.lr == 1e-4 and choice.alpha == 0.99 and choice.prune_edges
    assert choice.lr_scores == {"0.0001": pytest.approx(30.45), "0.001": pytest.approx(28.0)}


def test_grid_screens_far_rates_after_one_seed_and_chooses_among_fully_run_rates():
    # After seed 0, lr 1e-4 is 3 dB behind: it gets no more seeds. lr 1e-2 looks best on
    # seed 0 alone, but seed 1 drags it below 3e-3, and only fully run rates are chosen.
    def runs(seed, scores):  # both methods score the same at each rate
        return [
            result(2, method, 0.9, seed, 0, lr=lr, alpha=0.95, val=val)
            for lr, val in scores.items()
            for method in ("iht", "issp")
        ]

    seed0 = runs(0, {1e-4: 28.0, 3e-3: 31.0, 1e-2: 31.2})
    assert promising_lrs(seed0, 0.95, within=1.0) == [3e-3, 1e-2]
    seed1 = runs(1, {3e-3: 31.0, 1e-2: 30.0})
    choice = choose_protocol(seed0 + seed1, reference_alpha=0.95)
    assert choice.lr == 3e-3
    assert choice.lr_runs == {"0.0001": 1, "0.003": 2, "0.01": 2}


def test_grid_keeps_the_edges_dense_only_where_both_methods_gain():
    results = [
        result(2, "iht", 0.9, 0, 0, val=30.0),
        result(2, "issp", 0.9, 0, 0, val=30.0),
        result(2, "iht", 0.9, 0, 0, val=30.5, edges=False),
        result(2, "issp", 0.9, 0, 0, val=29.9, edges=False),
        result(2, "issp", 0.9, 0, 0, alpha=0.9, val=31.0, edges=False),
    ]
    choice = choose_protocol(results, reference_alpha=0.95)
    assert not choice.prune_edges and choice.alpha == 0.9
    assert choice.edge_scores == {"dense": pytest.approx(30.2), "pruned": pytest.approx(30.0)}


@pytest.mark.slow
def test_study_run_writes_the_report_and_resumes_without_retraining(tmp_path):
    args = [
        "study",
        "run",
        "--scales",
        "2",
        "--steps",
        "4",
        "--seeds",
        "0,1",
        "--ratios",
        "0.9",
        "--work",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "report"),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "report" / "study.json").read_text())
    row = report["summary"]["x2 r0.9 val"]
    assert [goal["met"] for goal in report["goals"]] == [None] * 8  # no Set5 scores asked for
    assert report["planned_runs"] == 6
    pruned = [r for r in report["runs"] if r["config"]["method"] != "dense"]
    assert all(r["dynamics"]["flips_before_kp"] >= 0 for r in pruned)
    # C5's figure, and the curves behind it, kept beside each pruned run's result.
    assert all(r["gradient_flow"]["grad_cv"] >= 0 for r in pruned)
    telemetry = sorted((tmp_path / "report" / "study_runs" / "two-stage").glob("*.telemetry.npz"))
    assert len(telemetry) == len(pruned)
    assert row["seeds"] == 2 and len(row["differences"]) == 2
    assert "| x2 | 0.9 | validation |" in (tmp_path / "report" / "study.md").read_text()
    finished = sorted((tmp_path / "report" / "study_runs" / "two-stage").glob("*.json"))
    assert len(finished) == 6
    stamps = [p.stat().st_mtime_ns for p in finished]
    assert main(args) == 0
    assert [p.stat().st_mtime_ns for p in finished] == stamps


def test_grid_reports_the_seed_spread_of_the_paired_difference_at_its_choice():
    results = [
        result(2, method, 0.9, seed, 0, val=val, edges=edges, alpha=0.95)
        for seed, (iht, issp) in enumerate([(30.0, 30.2), (30.1, 30.0)])
        for edges in (True, False)
        for method, val in (("iht", iht), ("issp", issp))
    ]
    results.append(result(2, "issp", 0.9, 0, 0, alpha=0.9, val=29.0, edges=False))  # not chosen
    for r in results:
        r["config"]["steps"] = 1000
    text = study.grid_markdown(results, "cmd", reference_alpha=0.95, bicubic=28.0)
    # Differences +0.2 and -0.1: mean +0.05, SD 0.212, half-width t(0.975, 1) * 0.15 = 1.906.
    assert "| 0.9 | +0.200, -0.100 | +0.050 | 0.212 | [-1.856, +1.956] |" in text


@pytest.mark.slow
def test_grid_runs_other_alphas_only_at_the_chosen_rate_and_writes_its_choice(tmp_path):
    args = ["study", "grid", "--steps", "4", "--seeds", "0", "--ratios", "0.9"]
    args += ["--lrs", "1e-4,1e-3", "--alphas", "0.9,0.95"]
    args += ["--work", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]
    assert main(args) == 0
    data = json.loads((tmp_path / "report" / "protocol_grid.json").read_text())
    choice = data["choice"]
    alpha_runs = [r["config"] for r in data["runs"] if r["config"]["alpha"] == 0.9]
    # 2 rates x (IHT, ISS-P), the same 2 at the chosen rate with dense edges, 1 more alpha.
    assert len(data["runs"]) == 7 and [c["lr"] for c in alpha_runs] == [choice["lr"]]
    assert alpha_runs[0]["prune_edges"] == choice["prune_edges"]
    text = (tmp_path / "report" / "protocol_grid.md").read_text()
    assert f"Chosen: lr {choice['lr']:g}" in text and "| bicubic (reference) |" in text
    assert 20 < data["bicubic_val_psnr"] < 50


def test_holm_multiplies_the_k_th_smallest_p_by_the_remaining_count_and_stays_monotone():
    assert study.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert study.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_report_names_the_cells_that_survive_holm_across_a_test_set():
    results = []
    for seed, (gap_a, gap_b) in enumerate([(0.30, 0.05), (0.31, -0.2), (0.29, 0.3)]):
        for ratio, gap in ((0.9, gap_a), (0.99, gap_b)):
            results += [result(2, "issp", ratio, seed, 35 + gap), result(2, "iht", ratio, seed, 35)]
    summary = study_summary(results, ["set5"])
    clear, unclear = summary["x2 r0.9 set5"], summary["x2 r0.99 set5"]
    assert clear.p_holm == pytest.approx(2 * clear.p) and clear.p_holm < 0.05
    assert unclear.p_holm == pytest.approx(unclear.p)  # the largest p: times 1
    assert study.holm_survivors(summary, "set5") == [clear]
    [sentence] = study.holm_sentences(summary, ["set5"])
    assert "across the 2 cells of Set5, 1 keep" in sentence and "x2 0.9 (ISS-P ahead" in sentence


def test_study_runs_keep_checkpoints_and_per_image_scores_and_rescore_reproduces_them(
    tmp_path, photos, capsys
):
    plan = ["--scales", "4", "--steps", "4", "--seeds", "0,1", "--ratios", "0.9"]
    out = ["--out", str(tmp_path / "report")]
    run = ["study", "run", *plan, "--work", str(tmp_path / "runs"), *out]
    assert main([*run, "--extra-test", str(photos)]) == 0
    results = tmp_path / "report" / "study_runs" / "two-stage"
    assert len(list(results.glob("*.safetensors"))) == 6  # every run's checkpoint is kept
    finished = json.loads(next(results.glob("*iht*_s1.json")).read_text())
    key = photos.name.lower()
    assert len(finished[key]["images"]) == len(list(photos.iterdir()))
    assert main(["study", "rescore", "--test", str(photos), *plan, *out]) == 0
    assert "largest gap to the committed scores 0.0000 dB" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "rescore" / f"{key}.json").read_text())
    assert report["largest_gap_to_committed"] == 0.0
    assert report["summary"][f"x4 r0.9 {key}"]["seeds"] == 2
    markdown = (tmp_path / "report" / "rescore" / f"{key}.md").read_text()
    assert "| x4 | 0.9 |" in markdown and "Per image" in markdown


def test_rescore_refuses_a_folder_with_no_scorable_image(tmp_path, photos):
    plan = ["--scales", "4", "--steps", "4", "--seeds", "0", "--ratios", "0.9"]
    out = ["--out", str(tmp_path / "report")]
    assert main(["study", "run", *plan, "--work", str(tmp_path / "runs"), *out]) == 0
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.open(next(photos.iterdir())).resize((12, 12)).save(tiny / "small.png")
    assert main(["study", "rescore", "--test", str(tiny), *plan, *out]) == 2


def test_a_failing_run_is_logged_when_it_fails_and_the_others_still_finish(tmp_path):
    good = study.seed_run(2, "iht", 0.9, None)
    good = study.StudyRun(good.name, dataclasses.replace(good.config, steps=4, val_every=4))
    bad_config = dataclasses.replace(good.config, method="issp", pattern="19:20")
    bad = study.StudyRun("refused_at_start", bad_config)  # ratio 0.9 is not 19/20
    folders = study.RunFolders(tmp_path / "work", tmp_path / "results")
    lines = []
    with pytest.raises(IsspError, match="1 of 2 runs failed: refused_at_start"):
        study.execute([bad, good], folders, {}, jobs=1, log=lines.append, threads=1)
    assert any("refused_at_start: FAILED: IsspError: pattern 19:20" in line for line in lines)
    assert good.result_path(folders.results).is_file()
