"""The zoo's build (issp.zoo): plan, train and record, score again, verify."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from issp import catalogue, zoo
from issp.catalogue import Score
from issp.cli import main
from issp.evaluate import evaluate_folder

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RECORDS = catalogue.load_manifest().checkpoints


def test_plan_covers_both_methods_at_every_ratio_plus_dense():
    plan = zoo.zoo_plan()
    names = [entry.name for entry in plan]
    assert len(names) == len(set(names)) == 11 + 11 + 5
    x2 = [e for e in plan if (e.arch, e.scale) == ("edsr-tiny", 2)]
    assert {(e.method, e.ratio) for e in x2 if e.method != "dense"} == {
        (m, r) for m in ("issp", "iht") for r in zoo.RATIOS
    }
    assert plan[0].method == "dense"


def test_every_method_of_a_model_is_trained_alike_but_for_the_rule():
    plan = [e for e in zoo.zoo_plan() if (e.arch, e.scale, e.ratio) == ("edsr-tiny", 2, 0.9)]
    configs = [dataclasses.asdict(zoo.entry_config(e, None, "cpu")) for e in plan]
    assert [c.pop("method") for c in configs] == ["issp", "iht"]
    assert configs[0] == configs[1] and configs[0]["alpha"] == 0.9


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch):
    """The zoo machinery pointed at tmp_path with a 4-step protocol."""
    monkeypatch.setattr(catalogue, "ZOO_DIR", tmp_path / "ckpt")
    monkeypatch.setattr(catalogue, "MANIFEST", tmp_path / "ckpt" / "manifest.json")
    monkeypatch.setattr(catalogue, "TELEMETRY_DIR", tmp_path / "tel")
    monkeypatch.setattr(zoo, "WORK_DIR", tmp_path / "work")
    (tmp_path / "ckpt").mkdir()
    protocol = {"steps": 4, "prune_steps": 2, "batch_size": 2, "patch": 16, "workers": 0}
    monkeypatch.setattr(zoo, "PROTOCOLS", {("edsr-tiny", 2): protocol})
    monkeypatch.setattr(zoo, "PLAN_RATIOS", {("edsr-tiny", 2): (0.5,)})
    return tmp_path


def test_build_records_each_checkpoint_once_and_loads_it_verified(tiny_zoo):
    lines = []
    zoo.build(None, None, log=lines.append)
    records = catalogue.load_manifest().checkpoints
    assert sorted(r.file for r in records) == sorted(e.file for e in zoo.zoo_plan())
    assert len(list((tiny_zoo / "tel").glob("*.npz"))) == 3
    zoo.build(None, None, log=lines.append)  # nothing left to do
    assert sum("training" in line for line in lines) == 3
    model, record = catalogue.load_zoo_model("edsr-tiny", 2, "iht", 0.5, zoo_dir=tiny_zoo / "ckpt")
    assert record.nonzeros < record.params and record.flops_sparse < record.flops_dense
    assert (record.alpha, record.prune_steps, record.flops_input) == (None, 2, (256, 256))


@pytest.mark.skipif(not (DATA / "test" / "Set5").is_dir(), reason="needs ../shared/data/test")
@pytest.mark.parametrize("record", RECORDS, ids=[r.file for r in RECORDS])
def test_shipped_checkpoint_reproduces_its_set5_psnr(record):
    model, _ = catalogue.load_zoo_model(record.arch, record.scale, record.method, record.ratio)
    psnr = evaluate_folder(model, DATA / "test" / "Set5", record.scale)["psnr"]
    assert psnr == pytest.approx(record.scores["set5"].psnr, abs=0.02)


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

    manifest = json.loads(catalogue.MANIFEST.read_text())
    manifest["checkpoints"][0]["set5"]["psnr"] += 0.05
    catalogue.MANIFEST.write_text(json.dumps(manifest))
    broken = catalogue.ZOO_DIR / manifest["checkpoints"][1]["file"]
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
    evaluate = zoo.evaluate_checkpoint

    def evaluate_while_a_build_finishes(model, test, scale):
        with catalogue.updating_manifest() as manifest:
            if all(r.file != "late.safetensors" for r in manifest.checkpoints):
                late = dataclasses.replace(manifest.checkpoints[0], file="late.safetensors")
                manifest.checkpoints.append(late)
        if model is None:
            return evaluate(model, test, scale)
        return {"set5": Score(30.0, 0.9)}

    monkeypatch.setattr(zoo, "evaluate_checkpoint", evaluate_while_a_build_finishes)
    scores = zoo.evaluate_zoo(tiny_zoo)
    assert sorted(r.method for r in scores.records) == ["dense", "iht", "issp"]
    assert list(scores.bicubic) == [("edsr-tiny", 2)]
    records = catalogue.load_manifest().checkpoints
    assert "late.safetensors" in {r.file for r in records}
    assert all(r.scores["set5"].psnr == 30.0 for r in records if r.file != "late.safetensors")


def test_builds_side_by_side_split_the_plan_instead_of_training_twice(tiny_zoo):
    zoo.WORK_DIR.mkdir(parents=True)
    taken = zoo.zoo_plan()[0]
    lines = []
    with zoo._claim(zoo.WORK_DIR / taken.file) as claimed:
        assert claimed
        zoo.build(None, None, log=lines.append)
    assert f"skipping {taken.name}: another build has it" in lines[0]
    built = {r.file for r in catalogue.load_manifest().checkpoints}
    assert built == {e.file for e in zoo.zoo_plan()} - {taken.file}
