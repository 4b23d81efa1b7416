"""The zoo as it lies on disk (issp.catalogue): manifest records, finding and loading one."""

import json
import math
import shutil

import pytest

from issp import IsspError, catalogue
from issp.catalogue import (
    MANIFEST,
    NO_ZOO,
    ZOO_DIR,
    ZOO_ENV,
    Manifest,
    Record,
    ZooEntry,
    load_manifest,
    load_zoo_model,
    score_key,
    zoo_folder,
)
from issp.checkpoint import checkpoint_info, sha256

RECORDS = load_manifest().checkpoints


def make_record(**changes) -> Record:
    fields = {"file": "a_x2_dense.safetensors", "arch": "a", "scale": 2, "method": "dense",
              "ratio": 0.0, "sha256": "0", "params": 10, "nonzeros": 10, "flops_dense": 1,
              "flops_sparse": 1}  # fmt: skip
    return Record(**(fields | changes))


def test_the_shipped_manifest_reads_and_writes_back_byte_for_byte():
    text = MANIFEST.read_text()
    assert json.dumps(Manifest.from_json(json.loads(text)).to_json(), indent=2) + "\n" == text
    assert all(r.scores[score_key("Set5")].psnr > 0 for r in RECORDS)


def test_a_malformed_record_is_named_or_handed_over_and_left_out():
    good = make_record().to_json()
    data = {"checkpoints": [good, {"file": "half.safetensors"}, {**good, "set5": {"psnr": 1}}]}
    with pytest.raises(IsspError, match="manifest record 2 lacks one of file, arch, scale"):
        Manifest.from_json(data)
    told = []
    manifest = Manifest.from_json(data, lambda index, err: told.append((index, str(err))))
    assert manifest.checkpoints == [make_record()]
    assert [index for index, _ in told] == [1, 2] and "malformed set5" in told[1][1]
    with pytest.raises(IsspError, match="has no list of checkpoints"):
        Manifest.from_json(["a list"])


def test_a_record_keeps_its_protocol_and_one_without_it_still_loads():
    record = make_record(protocol="two-stage")
    assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record
    old = make_record().to_json()
    assert "protocol" not in old and Record.from_json(old).protocol is None
    with pytest.raises(IsspError, match="malformed protocol"):
        Record.from_json(old | {"protocol": 2})


def test_a_zoo_elsewhere_keeps_its_telemetry_and_results_in_its_own_folder(tmp_path):
    assert catalogue.telemetry_folder(ZOO_DIR) == catalogue.TELEMETRY_DIR
    assert catalogue.results_file(ZOO_DIR) == catalogue.RESULTS
    assert catalogue.telemetry_folder(tmp_path) == tmp_path / "telemetry"
    assert catalogue.results_file(tmp_path) == tmp_path / "results.md"


def test_find_treats_ratio_zero_as_dense_and_lists_what_exists():
    manifest = Manifest([make_record()])
    assert manifest.find("a", 2, "issp", 0).method == "dense"
    with pytest.raises(IsspError, match="available ratios: 0"):
        manifest.find("a", 2, "issp", 0.9)


def test_entry_names_the_file_the_build_writes():
    assert ZooEntry("edsr-tiny", 2, "issp", 0.9).file == "edsr-tiny_x2_issp_r0.9.safetensors"
    assert ZooEntry("edsr-tiny", 4, "dense", 0.0).name == "edsr-tiny_x4_dense"
    assert RECORDS[0].entry.file == RECORDS[0].file


@pytest.mark.parametrize("record", RECORDS, ids=[r.file for r in RECORDS])
def test_shipped_checkpoint_matches_manifest_sha_and_ratio(record):
    path = ZOO_DIR / record.file
    assert sha256(path) == record.sha256
    info = checkpoint_info(path)
    for layer in info["layers"]:
        expected = math.ceil(record.ratio * layer["numel"])
        assert abs((layer["numel"] - layer["nonzeros"]) - expected) <= 0.005 * layer["numel"]
    assert info["nonzeros"] == record.nonzeros


def test_shipped_manifest_files_all_exist():
    for record in RECORDS:
        assert (ZOO_DIR / record.file).is_file(), record.file
    shipped = {p.name for p in ZOO_DIR.glob("*.safetensors")}
    assert shipped == {r.file for r in RECORDS}


def test_copying_the_zoo_elsewhere_keeps_it_loadable_and_checked(tmp_path):
    if not RECORDS:
        pytest.skip("no checkpoints shipped yet")
    record = RECORDS[0]
    shutil.copy(ZOO_DIR / record.file, tmp_path)
    shutil.copy(MANIFEST, tmp_path)
    model, loaded = load_zoo_model(
        record.arch, record.scale, record.method, record.ratio, zoo_dir=tmp_path
    )
    assert model.scale == record.scale and loaded == record
    path = tmp_path / record.file
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(IsspError, match="sha256"):
        load_zoo_model(record.arch, record.scale, record.method, record.ratio, zoo_dir=tmp_path)


def test_the_zoo_is_issp_zoo_dir_else_the_checkout_s_else_an_error_that_names_the_variable(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(ZOO_ENV, raising=False)
    assert zoo_folder() == ZOO_DIR
    # As in a wheel install: no checkout around the package.
    monkeypatch.setattr(catalogue, "ZOO_DIR", tmp_path / "site-packages" / "checkpoints")
    with pytest.raises(IsspError) as err:
        zoo_folder()
    assert str(err.value) == NO_ZOO
    assert "set ISSP_ZOO_DIR to the folder holding manifest.json" in NO_ZOO
    monkeypatch.setenv(ZOO_ENV, str(tmp_path))
    assert zoo_folder() == tmp_path
    with pytest.raises(IsspError, match="no model zoo found: set ISSP_ZOO_DIR .* does not exist"):
        load_zoo_model("edsr-tiny", 2, "issp", 0.9)
