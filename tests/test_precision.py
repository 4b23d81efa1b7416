import json

import pytest

from issp import IsspError, precision, study
from issp.precision import Decision, RunPair, comparison_shifts, run_shifts


def result(scale, method, ratio, seed, set5, precision_name="fp32"):
    config = {"scale": scale, "method": method, "ratio": ratio, "seed": seed}
    return {
        "name": f"{method}_{ratio}_{seed}_{precision_name}",
        "config": config,
        "set5": {"psnr": set5, "ssim": 0.9},
        "set14": {"psnr": set5 - 4, "ssim": 0.8},
        "val_psnr": set5 - 3,
        "train_seconds": 400.0 if precision_name == "fp32" else 100.0,
        "device": "cpu",
    }


def pairs_with(gap_fp32, gap_fast, seeds=(0, 1, 2), shift=-0.1):
    """ISS-P and IHT at x2 0.9: ISS-P ahead by ``gap_*`` per precision; bf16 moves IHT by
    ``shift``."""
    pairs = []
    for seed in seeds:
        iht = 35.0 + 0.01 * seed
        jitter = 0.001 * seed  # differences that are not all equal, as real ones never are
        for method, fp32, fast in (
            ("issp", iht + gap_fp32 + jitter, iht + shift + gap_fast + 2 * jitter),
            ("iht", iht, iht + shift),
        ):
            pairs.append(
                RunPair(
                    result(2, method, 0.9, seed, fp32), result(2, method, 0.9, seed, fast, "bf16")
                )
            )
    return pairs


def test_comparison_shift_is_the_change_of_issp_minus_iht_per_cell_and_seed():
    shifts = comparison_shifts(pairs_with(0.20, 0.15), "set5")
    # Per seed: (0.15 + 2j - 0.20 - j), with the test data's jitter j = 0.001 * seed.
    assert shifts.differences == pytest.approx((-0.05, -0.049, -0.048))
    moved = run_shifts(pairs_with(0.20, 0.15), "set5")
    assert moved.n == 6 and moved.mean == pytest.approx((-0.15 * 3 + 0.003 - 0.1 * 3) / 6)


def test_a_comparison_without_its_partner_run_is_left_out():
    pairs = pairs_with(0.2, 0.2)[:-1]  # seed 2's IHT pair unfinished
    assert comparison_shifts(pairs, "set5").n == 2


def test_rule_adopts_only_a_complete_test_whose_interval_lies_within_the_tolerance():
    small = study.PairedDifferences((0.01, -0.02, 0.03, 0.0))
    assert Decision(small, expected=4).adopted is True
    assert Decision(small, expected=18).adopted is None  # not all pairs in yet
    assert "Pending: 4 of 18" in Decision(small, expected=18).words
    wide = study.PairedDifferences((0.3, -0.3, 0.2, -0.25))
    assert Decision(wide, expected=4).adopted is False
    assert "not adopted" in Decision(wide, expected=4).words


def test_verdicts_agree_where_both_precisions_see_the_same_ordering():
    [row] = precision.cell_verdicts(pairs_with(0.30, 0.28), "set5")
    assert row["fp32"]["verdict"] == row["bf16"]["verdict"] == "ISS-P ahead" and row["agree"]
    [row] = precision.cell_verdicts(pairs_with(0.30, 0.0), "set5")
    assert not row["agree"]


def test_report_replaces_only_the_results_and_keeps_the_registered_rule(tmp_path):
    registered = "# Precision\n\nRule: within ±0.15 dB.\n\n## Results\n\nNot yet run.\n"
    (tmp_path / "precision.md").write_text(registered)
    summary = precision.write_precision(pairs_with(0.2, 0.2), "cmd", tmp_path)
    text = (tmp_path / "precision.md").read_text()
    assert text.startswith(registered.split("## Results")[0]) and "Not yet run" not in text
    assert "Pending: 3 of 18" in text and summary["adopted"] is None
    assert summary["train_seconds"]["bf16"] == [100.0] * 6
    assert json.loads((tmp_path / "precision.json").read_text())["pairs"] == 6
    (tmp_path / "precision.md").write_text("no heading")
    with pytest.raises(IsspError, match="registered protocol"):
        precision.write_precision(pairs_with(0.2, 0.2), "cmd", tmp_path)


def test_bias_test_plan_is_the_study_s_seed_0_to_2_runs_in_bf16():
    fast = precision.precision_plan(None)
    fp32 = study.study_plan(study.PROTOCOL, study.STEPS, None, seeds=precision.SEEDS)
    assert len(fast) == len(fp32) == 42
    assert [r.name for r in fast] == [r.name.replace("_s", "_bf16_s") for r in fp32]
    assert {r.config.precision for r in fast} == {"bf16"}


def test_machine_reruns_sit_next_to_the_committed_runs_they_repeat(tmp_path):
    results, reruns = tmp_path / "two-stage", tmp_path / "rerun"
    results.mkdir()
    reruns.mkdir()
    before = result(4, "iht", 0.95, 1, 29.52)
    again = result(4, "iht", 0.95, 1, 29.53) | {"machine": "AMD EPYC, 2 cores"}
    (results / "run.json").write_text(json.dumps(before))
    (reruns / "run.json").write_text(json.dumps(again))
    (reruns / "orphan.json").write_text(json.dumps(again))  # no committed twin: left out
    [row] = precision.machine_reruns(results, reruns)
    assert row["machine"] == "AMD EPYC, 2 cores"
    assert row["set5"]["rerun"] - row["set5"]["committed"] == pytest.approx(0.01)
    text = precision.results_markdown(precision.precision_summary(pairs_with(0.2, 0.2), [row]), "c")
    assert "| AMD EPYC, 2 cores | 29.530 (+0.010) |" in text


def test_one_seed_gives_no_verdict_to_agree_on():
    [row] = precision.cell_verdicts(pairs_with(0.30, 0.28, seeds=(0,)), "set5")
    assert row["seeds"] == 1 and row["agree"] is None
