"""Writing result files safely.

Every file issp writes (checkpoints, training state, telemetry, run scores, reports, the
CLI's outputs) goes through ``replacing``: it is written beside its target under a hidden
``.partial`` name and renamed over the target in one step, so a reader (the app, a report,
a resumed run) never sees half a file, and a crash leaves the old file or none. The
temporary name keeps no file suffix, so a folder listing such as ``*.json`` cannot pick a
file up while it is being written; writers that infer a format from the suffix are given
the format explicitly. ``writable`` checks an output path before the work that produces it
starts, so a typo costs a one-line error instead of a finished run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from issp import IsspError


def _cannot(path: Path, error: OSError) -> IsspError:
    return IsspError(f"cannot write {path}: {error.strerror or error}")


def writable(path: str | Path) -> Path:
    """``path`` as a Path once its folder exists (made if need be) and takes a new file;
    IsspError if ``path`` is a folder or its folder cannot be made or written."""
    path = Path(path)
    if path.is_dir():
        raise IsspError(f"{path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot(path, error) from None
    if not os.access(path.parent, os.W_OK):
        raise IsspError(f"cannot write {path}: its folder is not writable")
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for the caller to write; when the block ends
    without error it replaces ``path`` in one rename, otherwise it is removed. An OSError
    on the way is an IsspError naming ``path``."""
    path = writable(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    except OSError as error:
        raise _cannot(path, error) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
        os.replace(tmp, path)
    except OSError as error:
        raise _cannot(path, error) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_file(source: str | Path, target: str | Path) -> Path:
    """Copy ``source`` to ``target`` whole or not at all."""
    with open(source, "rb") as src, replacing(target) as tmp, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return Path(target)
