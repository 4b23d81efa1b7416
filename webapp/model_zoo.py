"""The checkpoint zoo as a running server sees it: what can be used, a bounded cache of
loaded models, and what cannot be used and why.

The manifest is re-read when its file changes, so checkpoints finished while the server
runs appear without a restart. A damaged zoo never stops the app: see :class:`ModelZoo`.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from issp import IsspError
from issp.catalogue import MANIFEST, Manifest, Record, load_manifest, load_zoo_model
from issp.checkpoint import sha256
from issp.upscale import inference_model
from webapp.checks import user_message


@dataclass(frozen=True)
class ZooProblem:
    """A part of the zoo that cannot be used: its name, why, and its manifest record when
    that record is well formed (so the checkpoint's arch, scale and method are known)."""

    name: str
    reason: str
    record: Record | None = None


class ModelZoo:
    """The checkpoints of one zoo folder, loaded lazily into a bounded LRU cache.

    Thread-safe: the queue runs several requests at once. A model is keyed by its
    manifest sha256 as well as its name, so a retrained checkpoint is never served stale.

    An unreadable or missing manifest serves no checkpoints, and a record that is
    malformed, or whose file is missing or does not match its sha256, is left out of
    :meth:`manifest`; :meth:`problems` says what and why. Files are checked each time the
    manifest is (re-)read, and ``load_zoo_model`` checks each file again before use.
    """

    def __init__(self, zoo_dir: str | Path, capacity: int = 16) -> None:
        if capacity < 1:
            raise IsspError(f"cache capacity must be at least 1, got {capacity}")
        self.zoo_dir = Path(zoo_dir)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, tuple[nn.Module, Record]] = OrderedDict()
        self._manifest = Manifest()
        self._problems: list[ZooProblem] = []
        # Never equal to a file's stamp, so the first call reads the manifest.
        self._manifest_stamp: object = object()

    @property
    def manifest_path(self) -> Path:
        return self.zoo_dir / MANIFEST.name

    def manifest(self) -> Manifest:
        """The zoo's usable checkpoints, re-read only when the manifest file has changed."""
        path = self.manifest_path
        with self._lock:
            try:
                stat = path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._manifest_stamp:
                self._manifest, self._problems = self._read()
                self._manifest_stamp = stamp
            return self._manifest

    def problems(self) -> list[ZooProblem]:
        """What in the zoo cannot be used, as of the manifest now on disk."""
        self.manifest()
        with self._lock:
            return list(self._problems)

    def status(self) -> str:
        """What is wrong with the zoo in a sentence for the UI; '' when nothing is."""
        problems = self.problems()
        if not problems:
            return ""
        listed = "; ".join(f"{p.name} {p.reason}" for p in problems)
        if not self.manifest().checkpoints:
            return (
                f"No checkpoint can be used: {listed}. "
                "Upscaling needs one; Evaluate still scores bicubic."
            )
        return f"Left out of the model zoo: {listed}. The other checkpoints are served."

    def _read(self) -> tuple[Manifest, list[ZooProblem]]:
        name = f"{self.zoo_dir.name}/{self.manifest_path.name}"
        if not self.manifest_path.exists():
            return Manifest(), [ZooProblem(name, "is missing")]
        found: dict[int, ZooProblem] = {}  # by place in the file, the order they are told

        def malformed(index: int, err: IsspError) -> None:
            found[index] = ZooProblem(f"manifest record {index + 1}", str(err))

        try:
            listed = load_manifest(self.manifest_path, malformed)
        except IsspError as err:
            return Manifest(), [ZooProblem(name, str(err))]
        except (OSError, ValueError) as err:
            # ValueError covers invalid JSON and text that is not UTF-8.
            return Manifest(), [ZooProblem(name, f"could not be read ({err})")]
        usable = []
        places = (index for index in itertools.count() if index not in found)
        for place, record in zip(places, listed.checkpoints, strict=False):
            reason = self._file_problem(record)
            if reason is None:
                usable.append(record)
            else:
                found[place] = ZooProblem(record.file, reason, record)
        return Manifest(usable, listed.protocols, listed.alpha), [found[i] for i in sorted(found)]

    def _file_problem(self, record: Record) -> str | None:
        if Path(record.file).name != record.file:
            return "is not a file name in the zoo folder"
        path = self.zoo_dir / record.file
        if not path.is_file():
            return "is missing"
        if sha256(path) != record.sha256:
            return "does not match the manifest's sha256"
        return None

    def model(self, arch: str, scale: int, method: str, ratio: float) -> tuple[nn.Module, Record]:
        """The model and manifest record of one checkpoint (``method`` as in the manifest)."""
        manifest = self.manifest()
        record = manifest.find(arch, scale, method, ratio)
        key = (record.file, record.sha256)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            # Loading under the lock keeps two requests from loading the same file twice;
            # a zoo checkpoint loads in milliseconds.
            try:
                model, record = load_zoo_model(arch, scale, method, ratio, manifest, self.zoo_dir)
                # Prepared once per cached model: the fastest measured way to run it here.
                loaded = (inference_model(model), record)
            except IsspError as err:
                reason = user_message(str(err))
                raise IsspError(f"checkpoint {record.file} cannot be used: {reason}") from None
            except Exception as err:
                # A file that matches its sha256 yet does not load (the manifest was written
                # for a broken file): whatever the reader raised, the user needs the name.
                raise IsspError(
                    f"checkpoint {record.file} cannot be loaded ({type(err).__name__})"
                ) from err
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded

    def cached(self) -> int:
        """How many models are held in memory now."""
        with self._lock:
            return len(self._models)
