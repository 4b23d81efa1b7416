"""The zoo's build (issp.zoo): plan, train and record, score again, verify."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from issp import catalogue, study, zoo, zoo_precision
from issp.catalogue import Score, ZooEntry
from issp.checkpoint import sha256
from issp.cli import main
from issp.evaluate import evaluate_folder
from issp.run_files import telemetry_path
from issp.train import PROTOCOLS, train

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
    assert configs[0] == configs[1] and configs[0]["alpha"] == PROTOCOLS["two-stage"].alpha


def test_edsr_tiny_entries_are_the_study_s_seed_0_runs():
    data = "../shared/data/train"
    studied = {r.name: r.config for r in study.study_plan("two-stage", study.STEPS, data)}
    entries = [e for e in zoo.zoo_plan() if e.arch == "edsr-tiny"]
    for entry in entries:
        config = zoo.entry_config(entry, data, "cpu")
        name = study.run_name(config)
        assert name == study.seed_run(entry.scale, entry.method, entry.ratio, data).name
        if entry.ratio in study.RATIOS or entry.method == "dense":
            assert studied[name] == config, name
        assert (config.seed, config.protocol) == (0, "two-stage")
        assert config.precision == study.PRECISION
    # 0.5 and 0.75, which the study does not run, are trained as it would train them.
    half = zoo.entry_config(ZooEntry("edsr-tiny", 4, "iht", 0.5), data, "cpu")
    studied_09 = studied[study.seed_run(4, "iht", 0.9, data).name]
    assert half == dataclasses.replace(studied_09, ratio=0.5)


def test_every_entry_trains_in_the_arithmetic_the_zoo_precision_rule_chose():
    in_bf16 = zoo_precision.decided_bf16()
    assert in_bf16 is not None, "analysis/zoo-precision.json is still pending"
    for entry in zoo.zoo_plan():
        assert zoo.entry_config(entry, None, "cpu").bf16 is in_bf16, entry.name


def test_swinir_is_trained_on_the_same_protocol_at_its_own_length():
    config = zoo.entry_config(ZooEntry("swinir-tiny", 2, "issp", 0.9), None, "cpu")
    assert (config.protocol, config.steps, config.batch_size, config.patch) == (
        "two-stage", 2000, 16, 32,
    )  # fmt: skip
    assert config.kp == PROTOCOLS["two-stage"].kp_fraction * 2000


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch, one_thread):
    """The zoo machinery on a 4-step study of 16 px patches, one ratio; the zoo in
    tmp_path/ckpt, the study's runs in tmp_path/study."""
    # In the module whose plans read them: issp.study only re-exports them.
    monkeypatch.setattr(study.plan, "STEPS", {2: 4})
    monkeypatch.setattr(study.plan, "PATCH", {2: 16})
    monkeypatch.setattr(zoo, "PLAN_RATIOS", {("edsr-tiny", 2): (0.5,)})
    return tmp_path


def build(root: Path, test: Path | None = None, log=lambda line: None, **options) -> None:
    """``zoo.build`` into root/ckpt, reusing the study's runs in root/study; it trains
    what the study has not finished unless told ``train_studied=False``."""
    runs = study.RunFolders.of(study.PROTOCOL, root / "study" / "runs", root / "study")
    options = {"train_studied": True} | options
    zoo.build(None, test, log=log, zoo_dir=root / "ckpt", study_runs=runs, **options)


def manifest(root: Path) -> catalogue.Manifest:
    return catalogue.load_manifest(root / "ckpt" / catalogue.MANIFEST_NAME)


def test_build_records_each_checkpoint_once_and_loads_it_verified(tiny_zoo):
    lines = []
    build(tiny_zoo, log=lines.append)
    records = manifest(tiny_zoo).checkpoints
    assert sorted(r.file for r in records) == sorted(e.file for e in zoo.zoo_plan())
    assert len(list((tiny_zoo / "ckpt" / "telemetry").glob("*.npz"))) == 3
    build(tiny_zoo, log=lines.append)  # nothing left to do
    assert sum("training" in line for line in lines) == 3
    model, record = catalogue.load_zoo_model("edsr-tiny", 2, "iht", 0.5, zoo_dir=tiny_zoo / "ckpt")
    assert record.nonzeros < record.params and record.flops_sparse < record.flops_dense
    assert (record.alpha, record.prune_steps, record.flops_input) == (None, 1, (256, 256))
    assert {r.protocol for r in records} == {"two-stage"}
    described = manifest(tiny_zoo).protocols["edsr-tiny x2"]
    assert described["protocol"] == "two-stage" and described["steps"] == 4
    lr = PROTOCOLS["two-stage"].lr
    precision = study.PRECISION
    assert (described["prune_steps"], described["lr"], described["precision"]) == (1, lr, precision)


def finish_study_run(root: Path, method: str, ratio: float, **changes) -> Path:
    """Train the study's seed-0 run of edsr-tiny x2 ``method`` at ``ratio`` into root/study
    as ``study run`` leaves it (checkpoint, telemetry, result); ``changes`` alter the
    training but not the run's name. Returns the checkpoint."""
    run = study.seed_run(2, method, ratio, None)
    folders = study.RunFolders.of(study.PROTOCOL, root / "study" / "runs", root / "study")
    checkpoint = run.checkpoint_path(folders.work)
    train(dataclasses.replace(run.config, **changes), checkpoint, progress=False)
    folders.results.mkdir(parents=True, exist_ok=True)
    run.result_path(folders.results).write_text(json.dumps({"name": run.name}))
    return checkpoint


def test_a_finished_study_run_is_copied_not_trained_again(tiny_zoo, monkeypatch):
    studied = finish_study_run(tiny_zoo, "iht", 0.5)
    trained = []
    monkeypatch.setattr(zoo, "train", lambda config, *args, **kw: trained.append(config))
    lines = []
    build(tiny_zoo, log=lines.append, only="iht")
    copied = tiny_zoo / "ckpt" / "edsr-tiny_x2_iht_r0.5.safetensors"
    assert trained == [] and sha256(copied) == sha256(studied)
    assert any(f"reusing edsr-tiny_x2_iht_r0.5: the study's {studied}" in line for line in lines)
    telemetry = tiny_zoo / "ckpt" / "telemetry" / "edsr-tiny_x2_iht_r0.5.npz"
    assert telemetry.read_bytes() == telemetry_path(studied).read_bytes()
    [record] = manifest(tiny_zoo).checkpoints
    assert (record.protocol, record.steps, record.seed) == ("two-stage", 4, 0)


def test_a_study_run_trained_otherwise_is_not_reused(tiny_zoo):
    studied = finish_study_run(tiny_zoo, "iht", 0.5, steps=8)
    lines = []
    build(tiny_zoo, log=lines.append, only="iht")
    assert any(f"not reusing {studied}: steps, prune_steps differ" in line for line in lines)
    assert any("training edsr-tiny_x2_iht_r0.5" in line for line in lines)
    assert manifest(tiny_zoo).checkpoints[0].steps == 4


@pytest.mark.skipif(not (DATA / "test" / "Set5").is_dir(), reason="needs ../shared/data/test")
@pytest.mark.parametrize("record", RECORDS, ids=[r.file for r in RECORDS])
def test_shipped_checkpoint_reproduces_its_set5_psnr(record):
    model, _ = catalogue.load_zoo_model(record.arch, record.scale, record.method, record.ratio)
    psnr = evaluate_folder(model, DATA / "test" / "Set5", record.scale)["psnr"]
    assert psnr == pytest.approx(record.scores["set5"].psnr, abs=0.02)


def test_an_entry_the_study_will_train_is_left_to_it_then_copied(tiny_zoo):
    lines = []
    build(tiny_zoo, log=lines.append, train_studied=False)
    assert [r.method for r in manifest(tiny_zoo).checkpoints] == ["iht", "issp"]  # not in it
    assert "left to the study, not finished yet" in lines[-1]
    assert "edsr-tiny_x2_dense" in lines[-1] and "--train-studied" in lines[-1]
    finish_study_run(tiny_zoo, "dense", 0.0)
    build(tiny_zoo, log=lines.append, train_studied=False)
    assert "reusing edsr-tiny_x2_dense" in " ".join(lines)
    assert len(manifest(tiny_zoo).checkpoints) == 3


def test_zoo_verify_passes_a_fresh_build_and_names_what_fails(tiny_zoo, capsys):
    rng = np.random.default_rng(0)
    set5 = tiny_zoo / "test" / "Set5"
    set5.mkdir(parents=True)
    for i in range(2):
        smooth = rng.random((5, 5, 3)).repeat(8, 0).repeat(8, 1)
        Image.fromarray((smooth * 255).astype(np.uint8)).save(set5 / f"{i}.png")
    build(tiny_zoo, tiny_zoo / "test")
    checked = ["zoo", "verify", "--data", str(tiny_zoo / "test"), "--zoo", str(tiny_zoo / "ckpt")]
    assert main(checked) == 0
    out = capsys.readouterr().out
    assert "3 of 3 checkpoints verified" in out and out.count("protocol: two-stage") == 3

    path = tiny_zoo / "ckpt" / catalogue.MANIFEST_NAME
    data = json.loads(path.read_text())
    data["checkpoints"][0]["set5"]["psnr"] += 0.05
    path.write_text(json.dumps(data))
    broken = tiny_zoo / "ckpt" / data["checkpoints"][1]["file"]
    broken.write_bytes(broken.read_bytes()[:-1] + b"\0")
    assert main(checked) == 1
    out = capsys.readouterr().out
    assert f"FAIL {data['checkpoints'][0]['file']}: sha256 ok" in out
    assert f"FAIL {broken.name}: sha256 MISMATCH, protocol: two-stage" in out
    assert "1 of 3 checkpoints verified" in out
    assert main([*checked[:2], "--data", str(set5)]) == 2  # Set5 itself, not its parent
    assert "has no Set5/ folder" in capsys.readouterr().err


def test_verify_names_each_shipped_record_s_protocol_or_says_it_was_not_recorded(capsys):
    main(["zoo", "verify"])
    lines = capsys.readouterr().out.splitlines()
    for record in RECORDS:
        [line] = [line for line in lines if f" {record.file}: " in line]
        assert line.endswith(f"protocol: {record.protocol or 'not recorded'}")


@pytest.mark.slow
def test_a_zoo_built_aside_is_built_verified_and_scored_there_leaving_checkpoints_alone(
    tiny_zoo, capsys
):
    shipped = {path.name: path.stat().st_mtime_ns for path in catalogue.ZOO_DIR.iterdir()}
    aside = tiny_zoo / "zoo-two-stage"
    assert main(["zoo", "build", "--zoo", str(aside), "--train-studied"]) == 0
    assert {p.name for p in aside.glob("*.safetensors")} == {e.file for e in zoo.zoo_plan()}
    assert main(["zoo", "verify", "--zoo", str(aside)]) == 0
    assert "3 of 3 checkpoints verified" in capsys.readouterr().out
    set5 = tiny_zoo / "test" / "Set5"
    set5.mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(set5 / "grey.png")
    assert main(["zoo", "eval", "--data", str(tiny_zoo / "test"), "--zoo", str(aside)]) == 0
    assert (aside / "results.md").read_text().startswith("# Zoo results")
    assert len(list((aside / "telemetry").glob("*.npz"))) == 3
    assert {p.name: p.stat().st_mtime_ns for p in catalogue.ZOO_DIR.iterdir()} == shipped


def test_zoo_eval_keeps_a_record_that_a_parallel_build_adds_meanwhile(tiny_zoo, monkeypatch):
    build(tiny_zoo)
    evaluate = zoo.evaluate_checkpoint
    path = tiny_zoo / "ckpt" / catalogue.MANIFEST_NAME

    def evaluate_while_a_build_finishes(model, test, scale):
        with catalogue.updating_manifest(path) as manifest:
            if all(r.file != "late.safetensors" for r in manifest.checkpoints):
                late = dataclasses.replace(manifest.checkpoints[0], file="late.safetensors")
                manifest.checkpoints.append(late)
        if model is None:
            return evaluate(model, test, scale)
        return {"set5": Score(30.0, 0.9)}

    monkeypatch.setattr(zoo, "evaluate_checkpoint", evaluate_while_a_build_finishes)
    scores = zoo.evaluate_zoo(tiny_zoo, tiny_zoo / "ckpt")
    assert sorted(r.method for r in scores.records) == ["dense", "iht", "issp"]
    assert list(scores.bicubic) == [("edsr-tiny", 2)]
    records = manifest(tiny_zoo).checkpoints
    assert "late.safetensors" in {r.file for r in records}
    assert all(r.scores["set5"].psnr == 30.0 for r in records if r.file != "late.safetensors")


def test_builds_side_by_side_split_the_plan_instead_of_training_twice(tiny_zoo):
    work = zoo.ZooFolders.of(tiny_zoo / "ckpt").work
    work.mkdir(parents=True)
    taken = zoo.zoo_plan()[0]
    lines = []
    with zoo._claim(work / taken.file) as claimed:
        assert claimed
        build(tiny_zoo, log=lines.append)
    assert f"skipping {taken.name}: another build has it" in lines[0]
    built = {r.file for r in manifest(tiny_zoo).checkpoints}
    assert built == {e.file for e in zoo.zoo_plan()} - {taken.file}
