"""The app's files: which uploads a request may read, the server's own folder, how much
disk its files may take, and the example images.

The app reads files only from folders it owns (:func:`uploaded_file`), keeps its own in
one folder per server (:func:`work_folder`) and bounds their size (:func:`prune_files`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import anyio
from filelock import FileLock, Timeout

from issp import IsspError
from issp.data import default_image_paths, load_image
from webapp import memory
from webapp.upscaling import centre_crop

UPLOAD_REFUSED = "that file was not uploaded to this app; upload the image again"
# Clients whose uploads of the last hour DiskBudget remembers, at most.
MAX_CLIENTS = 4096
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


@dataclass(frozen=True)
class _File:
    mtime: float
    size: int
    path: Path


def _files(root: Path) -> list[_File]:
    """Every regular file under ``root``, whatever its name (a ``.lock`` counts too)."""
    found = []
    for path in root.rglob("*"):
        try:
            stat = path.lstat()
        except OSError:  # gone meanwhile
            continue
        if S_ISREG(stat.st_mode):
            found.append(_File(stat.st_mtime, stat.st_size, path))
    return found


def prune_files(
    folders: Sequence[Path],
    max_bytes: int,
    keep: Collection[str] = (),
    fresh_seconds: float = 0.0,
    now: float | None = None,
) -> int:
    """Delete files under ``folders`` until they hold at most ``max_bytes``: the first
    folder's oldest files first (the results, which have been sent), then the next's.

    Every file counts, whatever its name. ``keep`` lists paths never deleted (the examples
    Gradio copied into its cache), and a file younger than ``fresh_seconds`` is not
    deleted either: it is an upload whose request may still be waiting in the queue (a
    full folder refuses new uploads at the door instead, :class:`DiskBudget`). Returns the
    bytes freed. Empty folders left behind are removed.
    """
    roots = [Path(folder) for folder in folders]
    now = time.time() if now is None else now
    found = [_files(root) for root in roots]
    total = sum(f.size for files in found for f in files)
    freed = 0
    for files in found:
        for file in sorted(files, key=lambda f: f.mtime):
            if total - freed <= max_bytes:
                return freed
            if str(file.path) in keep or now - file.mtime < fresh_seconds:
                continue
            try:
                file.path.unlink(missing_ok=True)
            except OSError:
                continue
            freed += file.size
            _remove_empty_parents(file.path, roots)
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


class DiskBudget:
    """The bound on the bytes under the app's folders, held at the door and by pruning.

    An upload reserves its size before a byte of it is written (:meth:`claim`): it is
    refused with a message when the folders plus what other uploads in flight have
    reserved would pass ``max_bytes``, or when its client has sent more than
    ``client_share`` of the bound within ``window`` seconds (Gradio deletes cached files
    after an hour), so one client cannot take the space of all. :meth:`prune` then keeps
    the folders under the bound, results first, never a fresh upload. Thread-safe.
    """

    def __init__(
        self,
        folders: Sequence[Path],
        max_bytes: int,
        keep: Collection[str] = (),
        client_share: float = 0.25,
        window: float = 3600.0,
        fresh_seconds: float = 120.0,
    ) -> None:
        self.folders = [Path(folder) for folder in folders]
        self.max_bytes = max_bytes
        self.keep = set(keep)
        self.client_bytes = int(client_share * max_bytes)
        self.window = window
        self.fresh_seconds = fresh_seconds
        self._lock = threading.Lock()
        self._reserved = 0
        self._sent: dict[str, list[tuple[float, int]]] = {}

    def usage(self) -> int:
        """Bytes the folders hold now."""
        return sum(f.size for root in self.folders for f in _files(root))

    def prune(self) -> int:
        """Delete old files down to the bound (see :func:`prune_files`); the bytes freed."""
        return prune_files(self.folders, self.max_bytes, self.keep, self.fresh_seconds)

    def claim(self, client: str, size: int) -> None:
        """Reserve room for an upload of ``size`` bytes from ``client``, to be given back
        with :meth:`release` once it is on disk (and counted); IsspError if there is none."""
        now = time.time()
        with self._lock:
            self._forget_before(now - self.window)
            sent = sum(n for _, n in self._sent.get(client, ()))
            if sent + size > self.client_bytes:
                raise IsspError(
                    f"you have uploaded {sent / 2**20:.0f} MB in the last "
                    f"{self.window / 60:.0f} minutes, the most one user may; try again later"
                )
            # One scan when there is room; a second only after pruning freed some.
            used = self.usage()
            if used + self._reserved + size > self.max_bytes and self.prune():
                used = self.usage()
            if used + self._reserved + size > self.max_bytes:
                raise IsspError(
                    "the server's upload space is full right now; try again in a minute"
                )
            self._reserved += size
            self._sent.setdefault(client, []).append((now, size))

    def _forget_before(self, cutoff: float) -> None:
        """Drop what clients sent before ``cutoff``, and past ``MAX_CLIENTS`` the clients
        seen least recently: senders that name themselves anew each time (no proxy in
        front) must not grow this without end. Called under the lock."""
        for name in list(self._sent):
            recent = [(t, n) for t, n in self._sent[name] if t >= cutoff]
            if recent:
                self._sent[name] = recent
            else:
                del self._sent[name]
        if len(self._sent) >= MAX_CLIENTS:  # room for the one about to be added
            latest = sorted(self._sent, key=lambda name: self._sent[name][-1][0])
            for name in latest[: len(self._sent) - MAX_CLIENTS + 1]:
                del self._sent[name]

    def release(self, size: int) -> None:
        """Give back a reservation of :meth:`claim`."""
        with self._lock:
            self._reserved -= size


def forget_directories(temp_file_sets: Sequence[set[str]]) -> None:
    """Drop folders from Gradio's sets of files to delete.

    A request that names a folder inside the upload folder as a file (the folder itself,
    say) gets it into those sets, and Gradio's cleanup, which removes them with
    ``os.remove``, then fails on it: the hourly one stops for good and the one at shutdown
    reports "Application shutdown failed". Our own pruning and the server folder's removal
    take care of everything in there anyway.
    """
    for temp_set in temp_file_sets:
        temp_set -= {path for path in list(temp_set) if Path(path).is_dir()}


def housekeeping(
    stop: threading.Event, every: float, budget: DiskBudget, temp_file_sets: Sequence[set[str]]
) -> None:
    """Every ``every`` seconds until ``stop`` is set (a thread's loop): prune to the disk
    bound, keep Gradio's cleanup working (:func:`forget_directories`) and hand freed memory
    back (:func:`webapp.memory.release_free_memory`)."""
    while not stop.wait(every):
        budget.prune()
        forget_directories(temp_file_sets)
        memory.release_free_memory()


class UploadGate:
    """ASGI middleware that makes every upload to Gradio reserve its room in a
    :class:`DiskBudget` first, and answers 413 with the reason when there is none.

    An upload must state its size (``Content-Length``; browsers and ``gradio_client``
    do); the server reads no more than that. The client is the last address of
    ``X-Forwarded-For`` where a proxy (a Space's) appends it, else the peer's: the
    addresses before it are the sender's to write. (Served without a proxy, a sender can
    name itself anew each time and so dodge its share, never the bound itself.)
    """

    def __init__(self, app, budget: DiskBudget, path: str = "/gradio_api/upload") -> None:
        self.app = app
        self.budget = budget
        self.path = path

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].endswith(self.path)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        if not length.isdigit():
            await _refuse(send, 411, "an upload must state its size (Content-Length)")
            return
        forwarded = headers.get(b"x-forwarded-for", b"").split(b",")[-1].strip()
        client = forwarded.decode("latin-1") or (scope.get("client") or ("?",))[0]
        size = int(length)
        try:
            # claim() scans the folders: on a worker thread, not the server's event loop.
            await anyio.to_thread.run_sync(self.budget.claim, client, size)
        except IsspError as error:
            await _refuse(send, 413, str(error))
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(size)


async def _refuse(send, status: int, message: str) -> None:
    body = message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
