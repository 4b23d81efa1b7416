"""Whole-or-nothing writes and output checks (issp.files)."""

import pytest

from issp import IsspError
from issp.files import copy_file, replacing, writable, write_text


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "scores.json"
    write_text(target, "old")
    with pytest.raises(ValueError), replacing(target) as tmp:
        tmp.write_text("half")
        raise ValueError("the writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
    # While being written, the file does not match the listing a reader makes.
    with replacing(target) as tmp:
        tmp.write_text("new")
        assert list(tmp_path.glob("*.json")) == [target]
    assert target.read_text() == "new"


def test_outputs_that_cannot_be_written_are_refused_in_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder.png").mkdir()
    assert writable(tmp_path / "new" / "deep" / "out.png").parent.is_dir()
    with pytest.raises(IsspError, match="is a folder"):
        writable(tmp_path / "folder.png")
    with pytest.raises(IsspError, match="cannot write"):
        write_text(tmp_path / "a-file" / "x.json", "{}")


def test_a_copy_is_whole_and_readable_by_others(tmp_path):
    source = tmp_path / "run.safetensors"
    source.write_bytes(bytes(range(256)) * 5000)
    copied = copy_file(source, tmp_path / "kept" / "run.safetensors")
    assert copied.read_bytes() == source.read_bytes()
    assert copied.stat().st_mode & 0o777 == 0o644
