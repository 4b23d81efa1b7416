"""The zoo as the server sees it (webapp.model_zoo): cache, damaged parts left out and told."""

import json
import shutil
import threading

import pytest
from fixtures import FAKE_RATIOS, make_fake_zoo, photo, run_upscale

from issp import IsspError
from issp.catalogue import REQUIRED
from webapp.model_choice import choose_model
from webapp.model_zoo import ModelZoo
from webapp.upscaling import Limits, evaluate

LIMITS = Limits()


def test_model_cache_is_bounded_and_reuses_models(fake_zoo):
    zoo = ModelZoo(fake_zoo, capacity=2)
    first, _ = zoo.model("edsr-tiny", 2, "issp", 0.9)
    assert zoo.model("edsr-tiny", 2, "issp", 0.9)[0] is first
    for ratio in FAKE_RATIOS:
        zoo.model("edsr-tiny", 2, "iht", ratio)
    assert zoo.cached() == 2
    # The least recently used model was evicted, so it is loaded afresh.
    assert zoo.model("edsr-tiny", 2, "issp", 0.9)[0] is not first


def damage(zoo_dir, corrupt=(), remove=()):
    """Flip the last byte of the files in ``corrupt`` and delete those in ``remove``."""
    for name in corrupt:
        data = bytearray((zoo_dir / name).read_bytes())
        data[-1] ^= 0xFF
        (zoo_dir / name).write_bytes(bytes(data))
    for name in remove:
        (zoo_dir / name).unlink()


def test_zoo_refuses_a_checkpoint_changed_after_the_manifest_was_read(fake_zoo, tmp_path):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    zoo = ModelZoo(copy)
    zoo.manifest()
    damage(copy, corrupt=["edsr-tiny_x2_dense.safetensors"])
    with pytest.raises(IsspError) as err:
        zoo.model("edsr-tiny", 2, "dense", 0.0)
    assert str(err.value).startswith(
        "checkpoint edsr-tiny_x2_dense.safetensors cannot be used: "
        "edsr-tiny_x2_dense.safetensors does not match the manifest's sha256"
    )
    assert str(tmp_path) not in str(err.value)


def test_a_damaged_checkpoint_is_left_out_and_the_rest_served(fake_zoo, tmp_path):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    damage(
        copy,
        corrupt=["edsr-tiny_x2_issp_r0.9.safetensors"],
        remove=["edsr-tiny_x2_iht_r0.9.safetensors"],
    )
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["checkpoints"].append({"file": "half.safetensors", "arch": "edsr-tiny"})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    zoo = ModelZoo(copy)
    assert len(zoo.manifest().checkpoints) == 8
    assert [(p.name, p.reason) for p in zoo.problems()] == [
        ("edsr-tiny_x2_issp_r0.9.safetensors", "does not match the manifest's sha256"),
        ("edsr-tiny_x2_iht_r0.9.safetensors", "is missing"),
        ("manifest record 11", f"lacks one of {', '.join(REQUIRED)}"),
    ]
    assert zoo.status().startswith("Left out of the model zoo: edsr-tiny_x2_issp_r0.9")
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    result = run_upscale(zoo, str(path), tmp_path, ratio=0.9, method="ISS-P")
    assert "edsr-tiny_x2_issp_r0.5.safetensors" in result.summary
    assert "nearest available to 0.9" in result.summary
    rows = evaluate(zoo, str(path), 2, 0.9, None, LIMITS).rows
    scored = [(r["model"], r["ratio"]) for r in rows if r["psnr"] is not None]
    marked = [(r["model"], r["ratio"], r["checkpoint"]) for r in rows if r["psnr"] is None]
    assert scored == [("bicubic", None), ("dense", 0.0), ("ISS-P", 0.5), ("IHT", 0.5)]
    assert marked == [
        ("ISS-P", 0.9, "edsr-tiny_x2_issp_r0.9.safetensors does not match the manifest's sha256"),
        ("IHT", 0.9, "edsr-tiny_x2_iht_r0.9.safetensors is missing"),
    ]


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        ("{not json", "could not be read (Expecting property name"),
        ('["a list"]', "has no list of checkpoints"),
        (None, "is missing"),
    ],
)
def test_a_broken_manifest_leaves_bicubic_and_says_why(fake_zoo, tmp_path, manifest, reason):
    copy = shutil.copytree(fake_zoo, tmp_path / "zoo")
    if manifest is None:
        (copy / "manifest.json").unlink()
    else:
        (copy / "manifest.json").write_text(manifest)
    zoo = ModelZoo(copy)
    assert zoo.manifest().checkpoints == []
    status = zoo.status()
    assert status.startswith(f"No checkpoint can be used: zoo/manifest.json {reason}")
    assert status.endswith("Upscaling needs one; Evaluate still scores bicubic.")
    path = tmp_path / "in.png"
    photo(48, 40).save(path)
    with pytest.raises(IsspError) as err:
        run_upscale(zoo, str(path), tmp_path)
    assert str(err.value) == f"no x2 model can be used now. {status}"
    result = evaluate(zoo, str(path), 2, 0.9, None, LIMITS)
    assert [row["model"] for row in result.rows] == ["bicubic"]
    assert result.note.startswith("Only bicubic is scored: no x2 checkpoint can be used.")


def test_zoo_sees_checkpoints_added_while_it_runs(tmp_path):
    folder = make_fake_zoo(tmp_path / "zoo", scales=(2,))
    manifest_path = folder / "manifest.json"
    full = json.loads(manifest_path.read_text())
    dense_only = [r for r in full["checkpoints"] if r["method"] == "dense"]
    manifest_path.write_text(json.dumps({"checkpoints": dense_only}))
    zoo = ModelZoo(folder)
    assert choose_model(zoo.manifest(), None, 2, "ISS-P", 0.9).method == "dense"
    manifest_path.write_text(json.dumps(full) + "\n")
    assert choose_model(zoo.manifest(), None, 2, "ISS-P", 0.9).ratio == 0.9


def test_lock_is_not_held_across_requests(zoo):
    # A model fetch must release the zoo's lock, or a second request would wait forever.
    zoo.model("edsr-tiny", 2, "dense", 0.0)
    done = threading.Event()
    threading.Thread(target=lambda: (zoo.manifest(), done.set())).start()
    assert done.wait(5)
