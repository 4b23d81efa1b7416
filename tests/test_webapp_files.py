"""The app's files (webapp.files): uploads it may read, its folder, the disk bound, examples."""

import os

import pytest
from fixtures import photo
from PIL import Image

from issp import IsspError
from webapp import files


def test_result_folders_keep_only_the_newest(tmp_path):
    folders = files.ResultFolders(tmp_path, keep=2)
    made = [folders.new() for _ in range(4)]
    assert [p.exists() for p in made] == [False, False, True, True]


def test_examples_are_small_crops_of_bundled_photos(tmp_path):
    paths = files.make_examples(tmp_path, count=2, side=96)
    assert len(paths) == 2
    for path in paths:
        assert max(Image.open(path).size) <= 96


def test_only_files_inside_the_upload_folders_are_read(tmp_path):
    uploads, outside = tmp_path / "uploads", tmp_path / "outside"
    uploads.mkdir(), outside.mkdir()
    photo().save(outside / "secret.png")
    photo().save(uploads / "in.png")
    (uploads / "link.png").symlink_to(outside / "secret.png")
    assert files.uploaded_file(str(uploads / "in.png"), [uploads]) == uploads / "in.png"
    assert files.uploaded_file("", [uploads]) is None
    refused = [
        str(outside / "secret.png"),
        str(outside / "missing.png"),
        str(uploads / "link.png"),
        str(uploads / ".." / "outside" / "secret.png"),
        "secret.png",
        "/etc/passwd",
        "nul\0byte",
        ["a", "list"],
    ]
    messages = set()
    for path in refused:
        with pytest.raises(IsspError) as err:
            files.uploaded_file(path, [uploads])
        messages.add(str(err.value))
    # One message for all: whether a file exists outside the uploads is not told.
    assert messages == {files.UPLOAD_REFUSED}


def test_work_folders_of_live_servers_stay_and_leftovers_go(tmp_path):
    root = tmp_path / "issp-app"
    leftover = root / "dead-server"
    (leftover / "gradio").mkdir(parents=True)
    (leftover / "gradio" / "big.png").write_bytes(b"x" * 1000)
    (leftover / ".lock").touch()
    with files.work_folder(root) as first:
        assert not leftover.exists(), "no server holds its lock: left by a dead one"
        with files.work_folder(root) as second:
            assert first.is_dir() and second.is_dir() and first != second
        assert first.is_dir() and not second.exists()
    assert not first.exists()


def test_pruning_deletes_the_oldest_files_down_to_the_bound(tmp_path):
    cache, results = tmp_path / "cache", tmp_path / "results"
    for n in range(6):
        folder = (cache if n % 2 else results) / f"request{n}"
        folder.mkdir(parents=True)
        (folder / "out.png").write_bytes(b"x" * 1000)
        os.utime(folder / "out.png", (1000 + n, 1000 + n))
    example = cache / "example" / "astronaut.png"
    example.parent.mkdir()
    example.write_bytes(b"x" * 1000)
    os.utime(example, (1, 1))
    freed = files.prune_files([cache, results], 2500, keep={str(example)})
    assert freed == 5000
    left = sorted(p.parent.name for p in tmp_path.rglob("*.png"))
    assert left == ["example", "request4"], "the first folder's oldest go first, then the next's"
    assert sorted(p.name for p in cache.iterdir()) == ["example"], "empty folders go"
    assert files.prune_files([cache, results], 2500, keep={str(example)}) == 0


def test_pruning_counts_every_file_whatever_its_name_and_spares_fresh_uploads(tmp_path):
    results, uploads = tmp_path / "results", tmp_path / "gradio"
    for folder, name, age in ((results, "out.png", 500), (uploads, ".lock", 400)):
        folder.mkdir()
        (folder / name).write_bytes(b"x" * 1000)
        os.utime(folder / name, (1000 - age, 1000 - age))
    fresh = uploads / "new" / "photo.png"
    fresh.parent.mkdir()
    fresh.write_bytes(b"x" * 1000)
    os.utime(fresh, (990, 990))
    freed = files.prune_files([results, uploads], 500, fresh_seconds=60, now=1000)
    assert freed == 2000, "a file named .lock counts and goes like any other"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["photo.png"], "10 s old: kept"


def test_an_upload_is_refused_at_the_door_when_the_folders_are_full(tmp_path):
    uploads = tmp_path / "gradio"
    uploads.mkdir()
    (uploads / "big.bin").write_bytes(b"x" * 3000)  # fresh: pruning may not take it
    budget = files.DiskBudget([uploads], 4000, client_share=1.0)
    budget.claim("a", 800)
    # The first upload's reservation counts before a byte of it is written.
    with pytest.raises(IsspError, match="upload space is full"):
        budget.claim("b", 300)
    budget.release(800)
    budget.claim("b", 300)


def test_one_client_cannot_take_more_than_its_share_of_the_disk(tmp_path):
    budget = files.DiskBudget([tmp_path], 4000, client_share=0.25)
    budget.claim("a", 600)
    budget.release(600)
    with pytest.raises(IsspError, match="the most one user may"):
        budget.claim("a", 600)
    budget.claim("b", 600)  # another client has its own share


def test_folders_are_dropped_from_gradio_s_sets_of_files_to_delete(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    temp_set = {str(tmp_path), str(tmp_path / "a.png"), str(tmp_path / "gone.png")}
    files.forget_directories([temp_set])
    assert temp_set == {str(tmp_path / "a.png"), str(tmp_path / "gone.png")}


def test_the_clients_remembered_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_CLIENTS", 3)
    budget = files.DiskBudget([tmp_path], 10**6, client_share=0.25)
    for client in "abcde":
        budget.claim(client, 10)
        budget.release(10)
    assert len(budget._sent) <= 3 and "e" in budget._sent, "the most recent are kept"
