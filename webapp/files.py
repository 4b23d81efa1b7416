"""The app's files: which uploads a request may read, the server's own folder, how much
disk its files may take, and the example images.

The app reads files only from folders it owns (:func:`uploaded_file`), keeps its own in
one folder per server (:func:`work_folder`) and bounds their size (:func:`prune_files`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISREG

from filelock import FileLock, Timeout

from issp import IsspError
from issp.data import default_image_paths, load_image
from webapp.upscaling import centre_crop

UPLOAD_REFUSED = "that file was not uploaded to this app; upload the image again"
LOCK = ".lock"


def uploaded_file(path: object, folders: Sequence[str | Path]) -> Path | None:
    """The real path of an upload inside one of ``folders``; None when nothing was sent.

    The path comes from the request, so it is resolved first (``..`` and symlinks
    followed) and then must lie inside a folder the app owns: Gradio's upload folder or
    the examples'. Every other path gets the same IsspError whether or not a file is there,
    so the answer says nothing about the server's files.
    """
    if path is None or path == "":
        return None
    if not isinstance(path, str):
        raise IsspError(UPLOAD_REFUSED)
    try:
        real = Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        # A NUL byte, a symlink loop: nothing that an upload folder holds.
        raise IsspError(UPLOAD_REFUSED) from None
    if any(real.is_relative_to(Path(folder).resolve()) for folder in folders):
        return real
    raise IsspError(UPLOAD_REFUSED)


@contextmanager
def work_folder(root: str | Path) -> Iterator[Path]:
    """A new folder under ``root`` for one server's files, removed when the server stops.

    Folders left by servers that died without cleaning up (``kill -9``, a crash) are
    removed first. A running server holds a lock on its folder's lock file, and the
    operating system drops the lock however the process ends, so a folder whose lock can
    be taken belongs to no live server. ``root``'s own lock keeps two servers starting at
    once from taking each other's new folder for a leftover.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / LOCK):
        for old in root.iterdir():
            if old.is_dir() and not _locked(old / LOCK):
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=root))
        lock = FileLock(folder / LOCK)
        lock.acquire()
    try:
        yield folder
    finally:
        lock.release()
        shutil.rmtree(folder, ignore_errors=True)


def _locked(path: Path) -> bool:
    try:
        with FileLock(path, timeout=0):
            return False
    except Timeout:
        return True
    except OSError:
        return False


def prune_files(folders: Sequence[Path], max_bytes: int, keep: Collection[str] = ()) -> int:
    """Delete the oldest files under ``folders`` until they hold at most ``max_bytes``.

    ``keep`` lists paths never deleted (the examples Gradio copied into its cache); lock
    files are kept too. Returns the bytes freed. Empty folders left behind are removed.
    """
    roots = [Path(folder) for folder in folders]
    files = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            if S_ISREG(stat.st_mode) and path.name != LOCK and str(path) not in keep:
                files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    freed = 0
    for _, size, path in sorted(files, key=lambda item: item[0]):
        if total - freed <= max_bytes:
            break
        try:
            path.unlink(missing_ok=True)
        except OSError:
            continue
        freed += size
        _remove_empty_parents(path, roots)
    return freed


def _remove_empty_parents(path: Path, roots: list[Path]) -> None:
    for parent in path.parents:
        if parent in roots:
            return
        try:
            parent.rmdir()
        except OSError:
            # Not empty (or gone already): the folders above it are not empty either.
            return


def prune_until(
    stop: threading.Event,
    every: float,
    folders: Sequence[Path],
    max_bytes: int,
    keep: Collection[str] = (),
) -> None:
    """:func:`prune_files` every ``every`` seconds until ``stop`` is set (a thread's loop)."""
    while not stop.wait(every):
        prune_files(folders, max_bytes, keep)


class ResultFolders:
    """Fresh folders for each request's output files, keeping only the newest ``keep``.

    Gradio copies returned files into its own cache (which ``delete_cache`` ages out), so
    ours only need to live until the response is sent; bounding them keeps disk use flat.
    """

    def __init__(self, root: str | Path, keep: int = 32) -> None:
        self.root = Path(root)
        self.keep = keep
        self._lock = threading.Lock()
        self._folders: list[Path] = []

    def new(self) -> Path:
        """A new empty folder; the oldest ones beyond ``keep`` are deleted."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self._lock:
            self._folders.append(folder)
            stale, self._folders = self._folders[: -self.keep], self._folders[-self.keep :]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def make_examples(out_dir: str | Path, count: int = 4, side: int = 160) -> list[Path]:
    """Small centre crops of photos shipped in installed packages, for the examples row.

    Crops stay small so an example upscales in a moment even on a busy CPU.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in default_image_paths()[:count]:
        crop = centre_crop(load_image(source).convert("RGB"), side)
        path = out_dir / f"{source.stem}.png"
        crop.save(path)
        paths.append(path)
    return paths
