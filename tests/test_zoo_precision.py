import dataclasses
import json

import pytest

from issp import IsspError, zoo_precision
from issp.cli import main

TIMES = {
    "seconds_per_step": {
        "edsr-tiny x2": {"channels-last": 0.2263, "bf16 + channels-last": 0.1097},
        "edsr-tiny x4": {"channels-last": 0.1226, "bf16 + channels-last": 0.0705},
    }
}


def test_bf16_arm_gets_the_same_cpu_time_in_steps_rounded_to_a_hundred():
    assert zoo_precision.run_steps(TIMES) == {
        "channels-last": {2: 3000, 4: 3000},
        "bf16": {2: 6200, 4: 5200},
    }
    with pytest.raises(IsspError, match="edsr-tiny x4"):
        zoo_precision.equal_time_steps({"seconds_per_step": {}}, 4)


def test_arms_of_a_pair_differ_only_in_arithmetic_and_length():
    plan = zoo_precision.zoo_precision_plan(None, TIMES)
    assert len(plan) == 12 and len({run.name for run in plan}) == 12
    for slow, fast in zip(plan[::2], plan[1::2], strict=True):
        assert slow.config.precision == "channels-last" and fast.config.precision == "bf16"
        same = dataclasses.replace(
            fast.config, bf16=False, steps=3000, val_every=3000, prune_steps=slow.config.kp
        )
        assert dataclasses.replace(slow.config, prune_steps=slow.config.kp) == same
        assert fast.config.kp == fast.config.steps // 4 and slow.config.seed in (100, 101, 102)


def _write_runs(results, differences):
    plan = zoo_precision.zoo_precision_plan(None, TIMES)
    for (slow, fast), gap in zip(
        zip(plan[::2], plan[1::2], strict=True), differences, strict=False
    ):
        for run, psnr in ((slow, 30.0), (fast, 30.0 + gap)):
            result = {"val_psnr": psnr, "config": {"steps": run.config.steps}}
            result |= {"train_seconds": 600.0, "machine": "test CPU"}
            run.result_path(results).write_text(json.dumps(result))
    return plan


@pytest.mark.parametrize(
    ("differences", "decided"),
    [
        ((0.1, 0.12, 0.09, 0.11, 0.1, 0.13), "the zoo is built in bf16"),
        ((0.1, -0.1, 0.05, -0.02, 0.0, 0.01), "the zoo stays in fp32 channels-last"),
    ],
)
def test_report_applies_the_registered_rule(tmp_path, differences, decided):
    results = tmp_path / "runs"
    results.mkdir()
    plan = _write_runs(results, differences)
    (tmp_path / "zoo-precision.md").write_text("# Registered\n\nrule\n\n## Results\n\nNot yet.\n")
    summary = zoo_precision.write_zoo_precision(plan, results, "cmd", tmp_path)
    assert [row["difference"] for row in summary["pairs"]] == pytest.approx(differences)
    assert summary["decision"].startswith(decided)
    text = (tmp_path / "zoo-precision.md").read_text()
    assert text.startswith("# Registered\n\nrule\n") and "| 100 | x2 | 3000 |" in text
    assert "bf16 / fp32 = 1.00" in text  # the arms' measured seconds, set equal above
    in_bf16 = decided == zoo_precision.IN_BF16
    assert zoo_precision.decided_bf16(tmp_path / "zoo-precision.json") is in_bf16


def test_report_waits_for_every_pair(tmp_path):
    results = tmp_path / "runs"
    results.mkdir()
    plan = _write_runs(results, (0.2, 0.2, 0.2))
    (tmp_path / "zoo-precision.md").write_text("# R\n\n## Results\n")
    summary = zoo_precision.write_zoo_precision(plan, results, "cmd", tmp_path)
    assert summary["decision"] == "pending: 3 of 6 pairs finished"
    assert zoo_precision.decided_bf16(tmp_path / "zoo-precision.json") is None
    with pytest.raises(IsspError, match="precision decision"):
        zoo_precision.decided_bf16(tmp_path / "missing.json")


def test_the_cli_refuses_test_sets_the_rule_does_not_score(tmp_path, capsys):
    assert main(["study", "zoo-precision", "--report", "--test", str(tmp_path)]) == 2
    assert "validation only" in capsys.readouterr().err


def test_report_refuses_a_file_without_its_registered_results_heading(tmp_path):
    report = tmp_path / "zoo-precision.md"
    report.write_text("# a protocol someone edited\n")
    with pytest.raises(IsspError, match="registered protocol"):
        zoo_precision.write_zoo_precision([], tmp_path, "cmd", tmp_path)
    assert report.read_text() == "# a protocol someone edited\n"
