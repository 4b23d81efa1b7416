"""The zoo's results as Markdown (issp.zoo_report)."""

import numpy as np

from issp import zoo_report
from issp.catalogue import Record, Score


def record(method, ratio, set5=None, set14=None, **fields) -> Record:
    scores = {}
    if set5 is not None:
        scores["set5"] = Score(set5, 0.9)
    if set14 is not None:
        scores["set14"] = Score(set14, 0.9)
    defaults = {"file": f"edsr-tiny_x2_{method}_r{ratio:g}.safetensors", "arch": "edsr-tiny",
                "scale": 2, "sha256": "0", "params": 2, "nonzeros": 1, "flops_dense": 2e9,
                "flops_sparse": 1e9}  # fmt: skip
    return Record(method=method, ratio=ratio, scores=scores, **(defaults | fields))


def test_results_markdown_has_a_row_per_model_and_provenance():
    issp = record("issp", 0.9, 36.1, 32.0, nonzeros=12000, flops_sparse=2.5e9)
    bicubic = {("edsr-tiny", 2): {"set5": Score(33.67, 0.93)}}
    table = zoo_report.results_markdown([issp], bicubic, "python -m issp zoo eval --data X")
    assert "python -m issp zoo eval --data X" in table and "cores" in table
    assert "| edsr-tiny x2 | bicubic |  | 33.67 | 0.9300 | nan | nan |  |  |" in table
    assert (
        "| edsr-tiny x2 | issp | 0.9 | 36.10 | 0.9000 | 32.00 | 0.9000 | 12,000 | 2.50 |" in table
    )
    assert table.index("bicubic") < table.index("| issp |")
    assert "vs IHT" not in table  # nothing to compare without an IHT row


def test_results_markdown_says_which_protocol_and_seed_trained_the_checkpoints():
    records = [record("dense", 0.0, protocol="two-stage", seed=0),
               record("iht", 0.9, protocol="two-stage", seed=0), record("issp", 0.9)]  # fmt: skip
    table = zoo_report.results_markdown(records, {}, "cmd")
    line = "Protocol (`issp/train.py: PROTOCOLS`): two-stage for 2, not recorded for 1"
    assert f"{line}; seed 0 for 2, not recorded for 1." in table.splitlines()


def test_results_markdown_compares_issp_with_iht_and_dense_at_each_ratio():
    records = [record("dense", 0.0, 36.5, 32.3), record("iht", 0.9, 35.0, 31.3),
               record("issp", 0.9, 35.3, 31.2), record("issp", 0.99, 34.0)]  # fmt: skip
    table = zoo_report.results_markdown(records, {}, "cmd")
    assert "| edsr-tiny x2 | 0.9 | +0.30 | -0.10 | -1.20 | -1.10 |" in table
    assert "| edsr-tiny x2 | 0.99 |  |  | -2.50 |  |" in table


def test_results_markdown_sums_the_training_time_per_model():
    records = [record("dense", 0.0, train_seconds=3600.0, device="cpu (2 cores)"),
               record("iht", 0.9, train_seconds=1800.0, device="cpu (2 cores)")]  # fmt: skip
    table = zoo_report.results_markdown(records, {}, "cmd")
    assert "edsr-tiny x2: 1.5 h for 2 checkpoints (cpu (2 cores))." in table


def test_dynamics_table_counts_flips_before_kp_and_the_magnitude_gap(tmp_path):
    steps, kp = 10, 6  # pruning stage: steps 1..5 (rows 0..4); the freeze is row 5
    flips = np.zeros((steps, 2), np.float32)
    flips[:5] = 1.0  # one flip per layer per pruning step
    flips[5] = 100.0  # the freeze step is not part of the pruning stage
    kept = np.full((steps, 2), 0.1, np.float32)
    selected = np.full((steps, 2), 0.05, np.float32)
    selected[4] = [0.002, 0.004]  # step 5, the last step before Kp
    np.savez(tmp_path / "m_issp.npz", flips=flips, kept_abs=kept, selected_abs=selected)
    records = [
        record("issp", 0.9, file="m_issp.safetensors", alpha=0.9, prune_steps=kp),
        record("iht", 0.9, file="no_telemetry.safetensors", prune_steps=kp),
    ]
    table = zoo_report.dynamics_markdown(records, tmp_path)
    assert "| edsr-tiny x2 | issp | 0.9 | 0.9 | 10 | 2 | 0.0300 |" in table
    assert "iht" not in table.split("|---|")[-1]
    assert zoo_report.dynamics_markdown(records[1:], tmp_path) == ""


def test_doc_section_replaces_only_what_lies_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:start -->\nold\n<!-- t:end -->\noutro\n")
    assert zoo_report.write_doc_section(readme, "t", "new\n")
    assert readme.read_text() == "intro\n<!-- t:start -->\nnew\n<!-- t:end -->\noutro\n"
    assert not zoo_report.write_doc_section(readme, "other", "x\n")
    assert "x" not in readme.read_text()
