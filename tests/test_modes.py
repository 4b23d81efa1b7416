import dataclasses
import json

import pytest

from issp import modes
from issp.models import build_model
from issp.prunable import prunable_weights
from issp.selection import nm_groups


def test_each_pair_differs_only_in_what_it_compares():
    plan = modes.modes_plan(None)
    assert len(plan) == 12 and len({run.name for run in plan}) == 12
    by_seed = {}
    for run in plan:
        by_seed.setdefault(run.config.seed, []).append(run.config)
    for configs in by_seed.values():
        nm, layer, greg, iht = configs
        assert nm.pattern == "19:20" and layer.pattern is None
        assert nm.ratio == 0.95 and layer.ratio == pytest.approx(23 / 24)
        assert dataclasses.replace(nm, pattern=None, ratio=layer.ratio) == layer
        assert dataclasses.replace(greg, method="iht") == iht and iht.ratio == 0.95
        assert {c.arch for c in configs} == {"swinir-tiny"} and nm.steps == 2000


def test_report_pairs_arms_by_seed_and_keeps_the_registered_text(tmp_path):
    results = tmp_path / "runs"
    results.mkdir()
    for seed, gap in zip(modes.SEEDS, (0.10, 0.12, 0.08), strict=True):
        for pair in modes.PAIRS:
            for arm, psnr in ((pair.first, 30.0 + gap), (pair.second, 30.0)):
                run = modes.arm_run(arm, seed, None)
                scores = {"set5": {"psnr": psnr}, "set14": {"psnr": psnr - 3}, "val_psnr": psnr}
                scores["train_seconds"] = 600.0
                run.result_path(results).write_text(json.dumps(scores))
    (tmp_path / "modes.md").write_text("# Registered\n\nrule\n\n## Results\n\nNot yet run.\n")
    summary = modes.write_modes(results, "cmd", tmp_path)
    row = summary[modes.PAIRS[0].name]["set5"]
    assert row["differences"] == pytest.approx([0.10, 0.12, 0.08]) and row["wins"] == 3
    text = (tmp_path / "modes.md").read_text()
    assert text.startswith("# Registered\n\nrule\n") and "| difference |" in text
    nm_run = modes.arm_run(modes.PAIRS[0].first, 1, None).name
    assert f"| {nm_run} | 1 | 30.120 | 27.120 | 30.120 | 600 |" in text


def test_every_arm_is_a_run_the_trainer_accepts_and_19_20_prunes_what_the_other_asks():
    plan = modes.modes_plan(None)
    for run in plan:
        run.config.validate()  # the 19:20 arm once failed here, at its start
    weights = prunable_weights(build_model("swinir-tiny", scale=2))
    groups = {nm_groups(w.numel(), 19, 20) for w in weights.values()}
    assert groups == {(23, 24)} and len(weights) == 19 and modes.SAME_SPARSITY == 23 / 24
