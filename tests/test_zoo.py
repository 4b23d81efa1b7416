import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from issp import IsspError, zoo
from issp.checkpoint import checkpoint_info
from issp.cli import main
from issp.evaluate import evaluate_folder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECORDS = zoo.load_manifest()["checkpoints"]


def test_plan_covers_both_methods_at_every_ratio_plus_dense():
    plan = zoo.zoo_plan()
    names = [entry.name for entry in plan]
    assert len(names) == len(set(names)) == 11 + 11 + 5
    x2 = [e for e in plan if (e.arch, e.scale) == ("edsr-tiny", 2)]
    assert {(e.method, e.ratio) for e in x2 if e.method != "dense"} == {
        (m, r) for m in ("issp", "iht") for r in zoo.RATIOS
    }
    assert plan[0].method == "dense"


def test_find_entry_treats_ratio_zero_as_dense_and_lists_what_exists():
    manifest = {"checkpoints": [{"arch": "a", "scale": 2, "method": "dense", "ratio": 0.0}]}
    assert zoo.find_entry(manifest, "a", 2, "issp", 0)["method"] == "dense"
    with pytest.raises(IsspError, match="available ratios: 0"):
        zoo.find_entry(manifest, "a", 2, "issp", 0.9)


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """The zoo machinery pointed at tmp_path with a 4-step protocol."""
    for name, sub in [("ZOO_DIR", "ckpt"), ("TELEMETRY_DIR", "tel"), ("WORK_DIR", "work")]:
        monkeypatch.setattr(zoo, name, tmp_path / sub)
    (tmp_path / "ckpt").mkdir()
    monkeypatch.setattr(zoo, "MANIFEST", tmp_path / "ckpt" / "manifest.json")
    protocol = {"steps": 4, "prune_steps": 2, "batch_size": 2, "patch": 16, "workers": 0}
    monkeypatch.setattr(zoo, "PROTOCOLS", {("edsr-tiny", 2): protocol})
    monkeypatch.setattr(zoo, "PLAN_RATIOS", {("edsr-tiny", 2): (0.5,)})
    return tmp_path


def test_build_records_each_checkpoint_once_and_loads_it_verified(tiny_zoo):
    lines = []
    zoo.build(None, None, log=lines.append)
    manifest = json.loads((tiny_zoo / "ckpt" / "manifest.json").read_text())
    assert sorted(r["file"] for r in manifest["checkpoints"]) == sorted(
        e.file for e in zoo.zoo_plan()
    )
    assert len(list((tiny_zoo / "tel").glob("*.npz"))) == 3
    zoo.build(None, None, log=lines.append)  # nothing left to do
    assert sum("training" in line for line in lines) == 3
    model, record = zoo.load_zoo_model("edsr-tiny", 2, "iht", 0.5, zoo_dir=tiny_zoo / "ckpt")
    assert record["nonzeros"] < record["params"] and record["flops_sparse"] < record["flops_dense"]
    path = tiny_zoo / "ckpt" / record["file"]
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(IsspError, match="sha256"):
        zoo.load_zoo_model("edsr-tiny", 2, "iht", 0.5, zoo_dir=tiny_zoo / "ckpt")


def test_results_markdown_has_a_row_per_model_and_provenance():
    rows = [
        {"arch": "edsr-tiny", "scale": 2, "method": "bicubic", "ratio": None, "nonzeros": None,
         "flops_sparse": None, "set5": {"psnr": 33.67, "ssim": 0.93}},
        {"arch": "edsr-tiny", "scale": 2, "method": "issp", "ratio": 0.9, "nonzeros": 12000,
         "flops_sparse": 2.5e9, "set5": {"psnr": 36.1, "ssim": 0.95},
         "set14": {"psnr": 32.0, "ssim": 0.9}},
    ]  # fmt: skip
    table = zoo.results_markdown(rows, "python -m issp zoo eval --data X")
    assert "python -m issp zoo eval --data X" in table and "cores" in table
    assert (
        "| edsr-tiny x2 | issp | 0.9 | 36.10 | 0.9500 | 32.00 | 0.9000 | 12,000 | 2.50 |" in table
    )
    assert "vs IHT" not in table  # nothing to compare without an IHT row


def test_results_markdown_compares_issp_with_iht_and_dense_at_each_ratio():
    def row(method, ratio, set5, set14=None):
        scores = {"set5": {"psnr": set5, "ssim": 0.9}}
        if set14 is not None:
            scores["set14"] = {"psnr": set14, "ssim": 0.9}
        return {"arch": "edsr-tiny", "scale": 2, "method": method, "ratio": ratio,
                "nonzeros": 1, "flops_sparse": 1.0, **scores}  # fmt: skip

    rows = [row("dense", 0.0, 36.5, 32.3), row("iht", 0.9, 35.0, 31.3),
            row("issp", 0.9, 35.3, 31.2), row("issp", 0.99, 34.0)]  # fmt: skip
    table = zoo.results_markdown(rows, "cmd")
    assert "| edsr-tiny x2 | 0.9 | +0.30 | -0.10 | -1.20 | -1.10 |" in table
    assert "| edsr-tiny x2 | 0.99 |  |  | -2.50 |  |" in table


@pytest.mark.parametrize("record", RECORDS, ids=[r["file"] for r in RECORDS])
def test_shipped_checkpoint_matches_manifest_sha_and_ratio(record):
    path = zoo.ZOO_DIR / record["file"]
    assert zoo.sha256(path) == record["sha256"]
    info = checkpoint_info(path)
    for layer in info["layers"]:
        expected = math.ceil(record["ratio"] * layer["numel"])
        assert abs((layer["numel"] - layer["nonzeros"]) - expected) <= 0.005 * layer["numel"]
    assert info["nonzeros"] == record["nonzeros"]


@pytest.mark.skipif(not (DATA / "test" / "Set5").is_dir(), reason="needs ../shared/data/test")
@pytest.mark.parametrize("record", RECORDS, ids=[r["file"] for r in RECORDS])
def test_shipped_checkpoint_reproduces_its_set5_psnr(record):
    model, _ = zoo.load_zoo_model(
        record["arch"], record["scale"], record["method"], record["ratio"]
    )
    psnr = evaluate_folder(model, DATA / "test" / "Set5", record["scale"])["psnr"]
    assert psnr == pytest.approx(record["set5"]["psnr"], abs=0.02)


def test_shipped_manifest_files_all_exist():
    for record in RECORDS:
        assert (zoo.ZOO_DIR / record["file"]).is_file(), record["file"]
    shipped = {p.name for p in zoo.ZOO_DIR.glob("*.safetensors")}
    assert shipped == {r["file"] for r in RECORDS}


def test_copying_the_zoo_elsewhere_keeps_it_loadable(tmp_path):
    if not RECORDS:
        pytest.skip("no checkpoints shipped yet")
    record = RECORDS[0]
    shutil.copy(zoo.ZOO_DIR / record["file"], tmp_path)
    shutil.copy(zoo.MANIFEST, tmp_path)
    model, _ = zoo.load_zoo_model(
        record["arch"], record["scale"], record["method"], record["ratio"], zoo_dir=tmp_path
    )
    assert model.scale == record["scale"]


def test_zoo_verify_passes_a_fresh_build_and_names_what_fails(tiny_zoo, capsys):
    rng = np.random.default_rng(0)
    set5 = tiny_zoo / "test" / "Set5"
    set5.mkdir(parents=True)
    for i in range(2):
        smooth = rng.random((5, 5, 3)).repeat(8, 0).repeat(8, 1)
        Image.fromarray((smooth * 255).astype(np.uint8)).save(set5 / f"{i}.png")
    zoo.build(None, tiny_zoo / "test", log=lambda line: None)
    assert main(["zoo", "verify", "--data", str(tiny_zoo / "test")]) == 0
    assert "3 of 3 checkpoints verified" in capsys.readouterr().out

    manifest = json.loads(zoo.MANIFEST.read_text())
    manifest["checkpoints"][0]["set5"]["psnr"] += 0.05
    zoo.MANIFEST.write_text(json.dumps(manifest))
    broken = zoo.ZOO_DIR / manifest["checkpoints"][1]["file"]
    broken.write_bytes(broken.read_bytes()[:-1] + b"\0")
    assert main(["zoo", "verify", "--data", str(tiny_zoo / "test")]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {manifest['checkpoints'][0]['file']}: sha256 ok" in out
    assert f"FAIL {broken.name}: sha256 MISMATCH" in out
    assert "1 of 3 checkpoints verified" in out
    assert main(["zoo", "verify", "--data", str(set5)]) == 2  # Set5 itself, not its parent
    assert "has no Set5/ folder" in capsys.readouterr().err


def test_zoo_eval_keeps_a_record_that_a_parallel_build_adds_meanwhile(tiny_zoo, monkeypatch):
    zoo.build(None, None, log=lambda line: None)
    late = {"file": "late.safetensors", "arch": "edsr-tiny", "scale": 2, "method": "iht"}
    evaluate = zoo.evaluate_checkpoint

    def evaluate_while_a_build_finishes(model, test, scale):
        manifest = json.loads(zoo.MANIFEST.read_text())
        if all(r["file"] != late["file"] for r in manifest["checkpoints"]):
            manifest["checkpoints"].append({**late, "ratio": 0.75, "sha256": "0"})
            zoo.MANIFEST.write_text(json.dumps(manifest))
        return (
            {"set5": {"psnr": 30.0, "ssim": 0.9}}
            if model is not None
            else evaluate(model, test, scale)
        )

    monkeypatch.setattr(zoo, "evaluate_checkpoint", evaluate_while_a_build_finishes)
    rows = zoo.evaluate_zoo(tiny_zoo)
    assert [r["method"] for r in rows] == ["bicubic", "dense", "iht", "issp"]
    records = json.loads(zoo.MANIFEST.read_text())["checkpoints"]
    assert "late.safetensors" in {r["file"] for r in records}
    assert all(r["set5"]["psnr"] == 30.0 for r in records if r["file"] != "late.safetensors")


def test_builds_side_by_side_split_the_plan_instead_of_training_twice(tiny_zoo):
    zoo.WORK_DIR.mkdir(parents=True)
    taken = zoo.zoo_plan()[0]
    lines = []
    with zoo._claim(zoo.WORK_DIR / taken.file) as claimed:
        assert claimed
        zoo.build(None, None, log=lines.append)
    assert f"skipping {taken.name}: another build has it" in lines[0]
    built = {r["file"] for r in zoo.load_manifest()["checkpoints"]}
    assert built == {e.file for e in zoo.zoo_plan()} - {taken.file}


def test_dynamics_table_counts_flips_before_kp_and_the_magnitude_gap(tmp_path):
    steps, kp = 10, 6  # pruning stage: steps 1..5 (rows 0..4); the freeze is row 5
    flips = np.zeros((steps, 2), np.float32)
    flips[:5] = 1.0  # one flip per layer per pruning step
    flips[5] = 100.0  # the freeze step is not part of the pruning stage
    kept = np.full((steps, 2), 0.1, np.float32)
    selected = np.full((steps, 2), 0.05, np.float32)
    selected[4] = [0.002, 0.004]  # step 5, the last step before Kp
    np.savez(tmp_path / "m_issp.npz", flips=flips, kept_abs=kept, selected_abs=selected)
    rows = [
        {"file": "m_issp.safetensors", "arch": "edsr-tiny", "scale": 2, "method": "issp",
         "ratio": 0.9, "alpha": 0.9, "prune_steps": kp},
        {"file": "no_telemetry.safetensors", "arch": "edsr-tiny", "scale": 2, "method": "iht",
         "ratio": 0.9, "alpha": None, "prune_steps": kp},
    ]  # fmt: skip
    table = zoo.dynamics_markdown(rows, tmp_path)
    assert "| edsr-tiny x2 | issp | 0.9 | 0.9 | 10 | 2 | 0.0300 |" in table
    assert "iht" not in table.split("|---|")[-1]
    assert zoo.dynamics_markdown(rows[1:], tmp_path) == ""
