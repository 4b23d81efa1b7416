"""What the web app does, as plain functions the tests call without a UI.

``app.py`` only lays out widgets and wires them to the functions here; every user-facing
problem (a bad file, an unknown method, an image over the limits, a missing checkpoint)
is raised as :class:`issp.IsspError` with a message meant for the person who caused it,
and ``app.py`` shows that message.

Models come from a :class:`ModelZoo`: its manifest is re-read when the file changes (so
checkpoints finished while the server runs appear without a restart) and loaded models
sit in a bounded, thread-safe LRU cache. A requested pruning ratio snaps to the nearest
ratio the zoo has for that method, architecture and scale; ratio 0 is the dense model.

The app reads files only from folders it owns (:func:`uploaded_file`), keeps its own in
one folder per server (:func:`work_folder`) and bounds their size (:func:`prune_files`).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

import plotly.graph_objects as go
import torch
from PIL import Image
from torch import nn

from issp import IsspError
from issp.checkpoint import sha256
from issp.data import default_image_paths, load_image, make_lr, modcrop, to_array
from issp.evaluate import evaluate_arrays
from issp.models import SCALES
from issp.upscale import upscale_image
from issp.zoo import FLOPS_INPUT, MANIFEST, find_entry, load_manifest, load_zoo_model

# UI/API method names -> the manifest's method names.
METHODS = {"ISS-P": "issp", "IHT": "iht"}
METHOD_LABELS = {"issp": "ISS-P", "iht": "IHT", "dense": "dense", "bicubic": "bicubic"}
METHOD_COLOURS = {"issp": "#1f77b4", "iht": "#d62728", "dense": "#7f7f7f"}
# One dash style per (arch, scale), so colour always means the method.
DASHES = ("solid", "dash", "dot", "dashdot")
FAMILY_LABELS = {"edsr": "EDSR-style", "swinir": "SwinIR-style"}
DEFAULT_ARCH = "edsr-tiny"
TEST_SETS = ("set5", "set14")
MANIFEST_COLUMNS = (
    "arch",
    "scale",
    "method",
    "ratio",
    "non-zero weights",
    "sparse GFLOPs",
    "set5 PSNR",
    "set5 SSIM",
    "set14 PSNR",
    "set14 SSIM",
    "trained on",
    "steps",
)
EVALUATE_COLUMNS = ("model", "ratio", "checkpoint", "psnr", "ssim")
# A request quoted back in an error is cut to this many characters, a whole message to
# MESSAGE_CHARS: an error must not hand a megabyte argument back to its sender.
ECHO_CHARS = 80
MESSAGE_CHARS = 1000
UPLOAD_REFUSED = "that file was not uploaded to this app; upload the image again"


@dataclass(frozen=True)
class Limits:
    """What one request may cost the server.

    ``max_upload_mb`` is enforced by Gradio before a file reaches us; the pixel limits
    are checked from the image header before any pixel is decoded. ``tile`` bounds the
    memory of one forward pass (LR pixels per side). Outputs larger than
    ``preview_side`` squared are compared on a centre crop of that size, because a
    browser slider over a 30-megapixel pair is unusable; the download is always full size.

    One megapixel keeps the slowest request (x4 with edsr-tiny) under a minute on one
    busy CPU core; two megapixels took about 90 s.
    """

    max_upload_mb: int = 10
    max_upscale_pixels: int = 1_000_000
    max_evaluate_pixels: int = 500_000
    tile: int = 192
    preview_side: int = 1024

    def describe(self) -> str:
        """One line for the UI saying what the limits are."""
        return (
            f"Limits: uploads up to {self.max_upload_mb} MB; upscaling up to "
            f"{self.max_upscale_pixels / 1e6:g} megapixels; evaluation up to "
            f"{self.max_evaluate_pixels / 1e6:g} megapixels. Large images run in "
            f"{self.tile}x{self.tile} px tiles."
        )


# What every manifest record must hold for the app to serve and describe its checkpoint.
RECORD_FIELDS = {
    "file": str,
    "arch": str,
    "scale": int,
    "method": str,
    "ratio": (int, float),
    "sha256": str,
    "params": int,
    "nonzeros": int,
    "flops_dense": (int, float),
    "flops_sparse": (int, float),
}


@dataclass(frozen=True)
class ZooProblem:
    """A part of the zoo that cannot be used: its name, why, and its manifest record when
    that record is well formed (so the checkpoint's arch, scale and method are known)."""

    name: str
    reason: str
    record: dict | None = None


class ModelZoo:
    """The checkpoints of one zoo folder, loaded lazily into a bounded LRU cache.

    Thread-safe: the queue runs several requests at once. A model is keyed by its
    manifest sha256 as well as its name, so a retrained checkpoint is never served stale.

    A damaged zoo never stops the app: an unreadable or missing manifest serves no
    checkpoints, and a record that is malformed, or whose file is missing or does not
    match its sha256, is left out of :meth:`manifest`; :meth:`problems` says what and why.
    Files are checked each time the manifest is (re-)read, and ``load_zoo_model`` checks
    each file again before use.
    """

    def __init__(self, zoo_dir: str | Path, capacity: int = 16) -> None:
        if capacity < 1:
            raise IsspError(f"cache capacity must be at least 1, got {capacity}")
        self.zoo_dir = Path(zoo_dir)
        self.capacity = capacity
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, tuple[nn.Module, dict]] = OrderedDict()
        self._manifest: dict = {"checkpoints": []}
        self._problems: list[ZooProblem] = []
        # Never equal to a file's stamp, so the first call reads the manifest.
        self._manifest_stamp: object = object()

    @property
    def manifest_path(self) -> Path:
        return self.zoo_dir / MANIFEST.name

    def manifest(self) -> dict:
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
        if not self.manifest()["checkpoints"]:
            return (
                f"No checkpoint can be used: {listed}. "
                "Upscaling needs one; Evaluate still scores bicubic."
            )
        return f"Left out of the model zoo: {listed}. The other checkpoints are served."

    def _read(self) -> tuple[dict, list[ZooProblem]]:
        name = f"{self.zoo_dir.name}/{self.manifest_path.name}"
        empty = {"checkpoints": []}
        if not self.manifest_path.exists():
            return empty, [ZooProblem(name, "is missing")]
        try:
            raw = load_manifest(self.manifest_path)
        except (OSError, ValueError) as err:
            # ValueError covers invalid JSON and text that is not UTF-8.
            return empty, [ZooProblem(name, f"could not be read ({err})")]
        if not isinstance(raw, dict) or not isinstance(raw.get("checkpoints"), list):
            return empty, [ZooProblem(name, "has no list of checkpoints")]
        usable, problems = [], []
        for index, record in enumerate(raw["checkpoints"]):
            well_formed = isinstance(record, dict) and all(
                isinstance(record.get(key), kind) for key, kind in RECORD_FIELDS.items()
            )
            if not well_formed:
                reason = f"lacks one of {', '.join(RECORD_FIELDS)}"
                problems.append(ZooProblem(f"manifest record {index + 1}", reason))
                continue
            reason = self._file_problem(record)
            if reason is None:
                usable.append(record)
            else:
                problems.append(ZooProblem(record["file"], reason, record))
        return {**raw, "checkpoints": usable}, problems

    def _file_problem(self, record: dict) -> str | None:
        if Path(record["file"]).name != record["file"]:
            return "is not a file name in the zoo folder"
        path = self.zoo_dir / record["file"]
        if not path.is_file():
            return "is missing"
        if sha256(path) != record["sha256"]:
            return "does not match the manifest's sha256"
        return None

    def model(self, arch: str, scale: int, method: str, ratio: float) -> tuple[nn.Module, dict]:
        """The model and manifest record of one checkpoint (``method`` as in the manifest)."""
        manifest = self.manifest()
        record = find_entry(manifest, arch, scale, method, ratio)
        key = (record["file"], record["sha256"])
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            # Loading under the lock keeps two requests from loading the same file twice;
            # a zoo checkpoint loads in milliseconds.
            try:
                loaded = load_zoo_model(arch, scale, method, ratio, manifest, self.zoo_dir)
            except IsspError as err:
                reason = user_message(str(err))
                raise IsspError(f"checkpoint {record['file']} cannot be used: {reason}") from None
            except Exception as err:
                # A file that matches its sha256 yet does not load (the manifest was written
                # for a broken file): whatever the reader raised, the user needs the name.
                raise IsspError(
                    f"checkpoint {record['file']} cannot be loaded ({type(err).__name__})"
                ) from err
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded

    def cached(self) -> int:
        """How many models are held in memory now."""
        with self._lock:
            return len(self._models)


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


@dataclass(frozen=True)
class Choice:
    """The checkpoint a request resolves to, and a note for the user about it."""

    arch: str
    scale: int
    method: str
    ratio: float
    note: str


@dataclass(frozen=True)
class UpscaleResult:
    """Files and summary of one upscale request."""

    png: Path
    bicubic_preview: Path
    model_preview: Path
    summary: str
    size: tuple[int, int]


@dataclass(frozen=True)
class EvaluateResult:
    """PSNR/SSIM rows (bicubic, dense, ISS-P, IHT) and a PSNR-vs-ratio figure."""

    rows: list[dict]
    figure: go.Figure
    note: str


def configure_threads(concurrency: int) -> int:
    """Split the CPU cores between the ``concurrency`` requests the queue runs at once.

    Without this every request would start one thread per core and they would fight over
    the cores. Returns the threads per request.
    """
    threads = max(1, (os.cpu_count() or 1) // max(1, concurrency))
    torch.set_num_threads(threads)
    return threads


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a request back in an error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# An absolute path: a slash not preceded by a word character, dot, colon or slash (so
# "x2/x4", "../a" and URLs are left alone), then one or more segments.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:/[^\s/'\"()\[\],;:]+)+")


def user_message(text: str, limit: int = MESSAGE_CHARS) -> str:
    """An error message as shown to a user: absolute paths cut to their last part, and at
    most ``limit`` characters.

    The library names files by their paths, which are the server's business; the request
    echoes are cut where they are made (:func:`echo`), this is the last line of defence.
    """
    text = _ABSOLUTE_PATH.sub(lambda match: Path(match.group()).name, text)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


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
    with open(root / ".lock", "w") as root_lock:
        fcntl.flock(root_lock, fcntl.LOCK_EX)
        for old in root.iterdir():
            if old.is_dir() and not _locked(old / ".lock"):
                shutil.rmtree(old, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(dir=root))
        lock = open(folder / ".lock", "w")  # noqa: SIM115 (held until the server stops)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield folder
    finally:
        lock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _locked(path: Path) -> bool:
    try:
        with open(path, "a") as file:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
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
            if S_ISREG(stat.st_mode) and path.name != ".lock" and str(path) not in keep:
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
        for parent in path.parents:
            if parent in roots:
                break
            try:
                parent.rmdir()
            except OSError:
                # Not empty (or gone already): the folders above it are not empty either.
                break
    return freed


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


def parse_method(method: str) -> str:
    """The manifest name (``issp``/``iht``) of a method given as ``ISS-P``/``IHT``."""
    names = {key.lower(): value for key, value in METHODS.items()}
    names.update({value: value for value in METHODS.values()})
    if not isinstance(method, str) or method.strip().lower() not in names:
        raise IsspError(f"unknown method {echo(method)}; choose one of {', '.join(METHODS)}")
    return names[method.strip().lower()]


def check_ratio(ratio: float) -> float:
    """``ratio`` as a float in [0, 1), else IsspError."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise IsspError(f"pruning ratio must be a number in [0, 1), got {echo(ratio)}") from None
    if not 0.0 <= value < 1.0:
        raise IsspError(f"pruning ratio must be in [0, 1), got {echo(ratio)}")
    return value


def check_scale(scale: int) -> int:
    """``scale`` as an int the models support, else IsspError."""
    try:
        value = int(scale)
    except (TypeError, ValueError):
        value = None
    if value is None or value != scale or value not in SCALES:
        raise IsspError(f"scale must be one of {', '.join(map(str, SCALES))}, got {echo(scale)}")
    return value


def zoo_archs(manifest: dict, scale: int | None = None) -> list[str]:
    """Architectures with at least one checkpoint (at ``scale`` if given), sorted."""
    return sorted(
        {r["arch"] for r in manifest["checkpoints"] if scale is None or r["scale"] == scale}
    )


def arch_label(arch: str) -> str:
    """``EDSR-style (edsr-tiny)`` for ``edsr-tiny``."""
    family = arch.split("-", 1)[0]
    return f"{FAMILY_LABELS.get(family, family)} ({arch})"


def resolve_arch(manifest: dict, arch: str | None, scale: int) -> str:
    """The zoo architecture meant by ``arch``: a preset name, or a family like ``EDSR``."""
    have = zoo_archs(manifest, scale)
    if not have:
        raise IsspError(f"the zoo has no x{scale} checkpoints yet")
    name = (arch or DEFAULT_ARCH).strip().lower() if isinstance(arch, str | None) else ""
    if name in have:
        return name
    family = [a for a in have if a.split("-", 1)[0] == name.removesuffix("-style")]
    if len(family) == 1:
        return family[0]
    raise IsspError(f"no x{scale} checkpoints of {echo(arch)}; the zoo has {', '.join(have)}")


def available_ratios(manifest: dict, arch: str, scale: int, method: str) -> list[float]:
    """Ratios with a checkpoint for ``method`` (manifest name); 0 stands for the dense model."""
    ratios = {
        0.0 if r["method"] == "dense" else float(r["ratio"])
        for r in manifest["checkpoints"]
        if r["arch"] == arch and r["scale"] == scale and r["method"] in (method, "dense")
    }
    return sorted(ratios)


def nearest(ratio: float, ratios: Sequence[float]) -> float:
    """The entry of ``ratios`` closest to ``ratio`` (the smaller one on a tie)."""
    return min(ratios, key=lambda r: (abs(r - ratio), r))


def choose_model(manifest: dict, arch: str | None, scale: int, method: str, ratio: float) -> Choice:
    """Validate a request and snap its ratio to the nearest checkpoint the zoo has."""
    scale = check_scale(scale)
    method = parse_method(method)
    ratio = check_ratio(ratio)
    arch = resolve_arch(manifest, arch, scale)
    ratios = available_ratios(manifest, arch, scale, method)
    if not ratios:
        raise IsspError(f"no {METHOD_LABELS[method]} checkpoints of {arch} x{scale} yet")
    used = nearest(ratio, ratios)
    label = "dense model" if used == 0 else f"{METHOD_LABELS[method]} ratio {used:g}"
    note = f"Using {arch} x{scale}, {label}."
    if abs(used - ratio) >= 1e-9:
        listed = ", ".join(f"{r:g}" for r in ratios)
        note = (
            f"Using {arch} x{scale}, {label} (nearest available to {ratio:g}; "
            f"available: {listed}, where 0 = dense)."
        )
    return Choice(arch, scale, "dense" if used == 0 else method, used, note)


@dataclass(frozen=True)
class Options:
    """What the model pickers offer and show for the current selection."""

    archs: list[tuple[str, str]]
    arch: str | None
    ratio: float | None
    note: str


def model_options(
    manifest: dict, scale: int, arch: str | None, method: str, ratio: float
) -> Options:
    """The architectures on offer at ``scale`` and the checkpoint the selection snaps to.

    Never raises: a selection the zoo cannot serve (yet) gets a note instead, because it
    runs whenever a picker moves, before the user has asked for anything.
    """
    archs = zoo_archs(manifest, scale) if scale in SCALES else []
    if arch not in archs:
        arch = DEFAULT_ARCH if DEFAULT_ARCH in archs else next(iter(archs), None)
    labelled = [(arch_label(a), a) for a in archs]
    try:
        choice = choose_model(manifest, arch, scale, method, ratio)
    except IsspError as err:
        return Options(labelled, arch, None, f"Not available: {err}.")
    return Options(labelled, choice.arch, choice.ratio, choice.note)


def open_image(path: str | Path | None, max_pixels: int) -> Image.Image:
    """Decode an upload with the library's rules, naming it by file name only in errors."""
    if path is None or str(path).strip() == "":
        raise IsspError("no image: upload one first")
    try:
        return load_image(path, max_pixels=max_pixels)
    except IsspError as err:
        # The server's temp path means nothing to the user and should not leak to them.
        raise IsspError(str(err).replace(str(path), Path(path).name)) from None


def _centre_crop(img: Image.Image, side: int) -> Image.Image:
    width, height = img.size
    left, top = max((width - side) // 2, 0), max((height - side) // 2, 0)
    return img.crop((left, top, min(left + side, width), min(top + side, height)))


def upscale(
    zoo: ModelZoo,
    path: str | Path | None,
    scale: int,
    ratio: float,
    method: str,
    arch: str | None,
    limits: Limits,
    out_dir: str | Path,
) -> UpscaleResult:
    """Upscale one image with the zoo checkpoint nearest the request.

    Writes the full-size PNG and the two comparison images (bicubic and model, the same
    centre crop when the output is large) into ``out_dir``.
    """
    manifest = zoo.manifest()
    if not zoo_archs(manifest, check_scale(scale)) and zoo.problems():
        raise IsspError(f"no x{scale} model can be used now. {zoo.status()}")
    choice = choose_model(manifest, arch, scale, method, ratio)
    img = open_image(path, limits.max_upscale_pixels)
    model, record = zoo.model(choice.arch, choice.scale, choice.method, choice.ratio)
    started = time.perf_counter()
    sr = upscale_image(model, img, choice.scale, tile=limits.tile)
    latency = time.perf_counter() - started
    bicubic = upscale_image(None, img, choice.scale)

    out_dir = Path(out_dir)
    stem = Path(str(path)).stem[:60] or "image"
    png = out_dir / f"{stem}_x{choice.scale}_{Path(record['file']).stem}.png"
    sr.save(png)
    cropped = sr.width * sr.height > limits.preview_side**2
    previews = []
    for name, image in (("bicubic", bicubic), ("model", sr)):
        preview = _centre_crop(image, limits.preview_side) if cropped else image
        previews.append(out_dir / f"compare_{name}.png")
        # Fast compression: previews are shown once and thrown away.
        preview.save(previews[-1], compress_level=1)

    width, height = img.size
    tiles = math.ceil(height / limits.tile) * math.ceil(width / limits.tile)
    pixels = width * height / (FLOPS_INPUT[0] * FLOPS_INPUT[1])
    summary = (
        f"{choice.note} Checkpoint `{record['file']}`; "
        f"non-zero weights {record['nonzeros']:,} of {record['params']:,} "
        f"({record['nonzeros'] / record['params']:.1%}); "
        f"sparse FLOPs {record['flops_sparse'] * pixels / 1e9:.2f} G "
        f"(dense {record['flops_dense'] * pixels / 1e9:.2f} G) for this {width}x{height} input; "
        f"latency {latency:.2f} s on {torch.get_num_threads()} CPU thread(s); "
        f"{tiles} tile{'s' if tiles > 1 else ''} of {limits.tile} px; "
        f"output {sr.width}x{sr.height}."
    )
    if cropped:
        summary += f" The comparison shows the centre {limits.preview_side} px crop."
    return UpscaleResult(png, previews[0], previews[1], summary, sr.size)


def evaluate(
    zoo: ModelZoo,
    path: str | Path | None,
    scale: int,
    ratio: float,
    arch: str | None,
    limits: Limits,
) -> EvaluateResult:
    """Score bicubic, dense, ISS-P and IHT on an upload used as ground truth.

    The upload is the HR image; its LR is made with the library's degradation
    (:func:`issp.data.make_lr`), and every model is scored with the benchmark protocol
    (:func:`issp.evaluate.evaluate_arrays`). Each pruned method is scored at its ratio
    nearest to ``ratio`` and, for the figure, at every ratio it has. A checkpoint that
    cannot be used gets a row that says why, with no scores; a zoo with nothing at
    ``scale`` still gets bicubic scored.
    """
    scale = check_scale(scale)
    ratio = check_ratio(ratio)
    manifest = zoo.manifest()
    arch = resolve_arch(manifest, arch, scale) if zoo_archs(manifest, scale) else None
    img = open_image(path, limits.max_evaluate_pixels)
    hr = modcrop(to_array(img), scale)
    # Both metrics drop `scale` px per border and SSIM needs an 11x11 window inside.
    smallest = 2 * scale + 11
    if min(hr.shape[:2]) < smallest:
        raise IsspError(
            f"evaluation needs an image of at least {smallest}x{smallest} px for x{scale}, "
            f"got {img.width}x{img.height}"
        )
    pair = (Path(str(path)).name, make_lr(hr, scale), hr)

    def score(model: nn.Module | None) -> dict:
        result = evaluate_arrays(model, [pair], scale, tile=limits.tile)
        return {"psnr": round(result["psnr"], 3), "ssim": round(result["ssim"], 4)}

    def unusable(label: str, ratio: float, why: str) -> dict:
        return {"model": label, "ratio": ratio, "checkpoint": why, "psnr": None, "ssim": None}

    rows = [{"model": "bicubic", "ratio": None, "checkpoint": "", **score(None)}]
    sweep: dict[str, list[tuple[float, float]]] = {}
    missing = []
    for label, method in (("dense", "dense"), *METHODS.items()):
        ratios = sorted(r["ratio"] for r in manifest["checkpoints"] if _is(r, arch, scale, method))
        if not ratios:
            missing.append(label)
            continue
        chosen = nearest(ratio, ratios)
        for each in ratios if method != "dense" else [0.0]:
            try:
                model, record = zoo.model(arch, scale, method, each)
            except IsspError as err:
                if each == chosen:
                    rows.append(unusable(label, each, str(err)))
                continue
            scores = score(model)
            if method != "dense":
                sweep.setdefault(label, []).append((each, scores["psnr"]))
            if each == chosen:
                rows.append({"model": label, "ratio": each, "checkpoint": record["file"], **scores})
    for problem in zoo.problems():
        record = problem.record
        if record is not None and record["scale"] == scale and arch in (None, record["arch"]):
            label = METHOD_LABELS.get(record["method"], record["method"])
            rows.append(unusable(label, record["ratio"], f"{problem.name} {problem.reason}"))
    if arch is None:
        note = f"Only bicubic is scored: no x{scale} checkpoint can be used. {zoo.status()}"
    else:
        note = f"{arch} x{scale} on {img.width}x{img.height} px used as ground truth."
        if set(missing) & set(METHODS):
            pruned = " or ".join(m for m in missing if m in METHODS)
            note += f" No {pruned} checkpoints of {arch} x{scale} yet."
    return EvaluateResult(rows, _sweep_figure(rows, sweep, arch, scale), note.strip())


def _is(record: dict, arch: str, scale: int, method: str) -> bool:
    return (record["arch"], record["scale"], record["method"]) == (arch, scale, method)


def _sweep_figure(
    rows: list[dict], sweep: dict[str, list[tuple[float, float]]], arch: str | None, scale: int
) -> go.Figure:
    # Both methods prune the same dense start, so each line begins at the dense score.
    dense = [
        (0.0, row["psnr"]) for row in rows if row["model"] == "dense" and row["psnr"] is not None
    ]
    figure = go.Figure()
    for label, points in sweep.items():
        ratios, psnrs = zip(*dense, *points, strict=True)
        figure.add_trace(
            go.Scatter(
                x=ratios,
                y=psnrs,
                mode="lines+markers",
                name=label,
                line_color=METHOD_COLOURS[METHODS[label]],
            )
        )
    bicubic = rows[0]["psnr"]
    figure.add_hline(y=bicubic, line_dash="dot", annotation_text=f"bicubic {bicubic:.2f} dB")
    figure.update_layout(
        title=f"PSNR on this image, {arch or 'bicubic'} x{scale} (ratio 0 = dense)",
        xaxis_title="pruning ratio",
        yaxis_title="PSNR (dB, Y channel)",
        template="plotly_white",
    )
    return figure


def results_text(results_path: Path | None) -> str | None:
    """The stored results table (``analysis/results.md``), or None if none was written."""
    if results_path is None or not results_path.is_file():
        return None
    return results_path.read_text()


def manifest_rows(manifest: dict) -> list[dict]:
    """One flat row per zoo checkpoint with its stored scores, size and provenance."""
    rows = []
    for record in manifest["checkpoints"]:
        row: dict = {
            "arch": record["arch"],
            "scale": record["scale"],
            "method": METHOD_LABELS.get(record["method"], record["method"]),
            "ratio": record["ratio"],
            "non-zero weights": record.get("nonzeros"),
            "sparse GFLOPs": _giga(record.get("flops_sparse")),
        }
        for test_set in TEST_SETS:
            scores = record.get(test_set, {})
            row[f"{test_set} PSNR"] = scores.get("psnr")
            row[f"{test_set} SSIM"] = scores.get("ssim")
        row["trained on"] = record.get("device", "")
        row["steps"] = record.get("steps")
        rows.append(row)
    return rows


def _giga(flops: float | None) -> float | None:
    return None if flops is None else round(flops / 1e9, 3)


def provenance(manifest: dict, results_path: Path | None) -> str:
    """Where the stored numbers come from: command, devices and protocol."""
    devices = sorted({r.get("device", "unknown") for r in manifest["checkpoints"]})
    lines = [
        "Scores are stored by `python -m issp zoo build --data DIR --test DIR` (training, "
        "then Set5/Set14 evaluation) and refreshed by `python -m issp zoo eval`; PSNR/SSIM "
        "on the Y channel with border = scale, FLOPs for a "
        f"{FLOPS_INPUT[0]}x{FLOPS_INPUT[1]} LR input.",
    ]
    if devices:
        lines.append(f"Checkpoints trained on: {'; '.join(devices)}.")
    if "alpha" in manifest:
        lines.append(f"ISS-P alpha = {manifest['alpha']}.")
    for name, protocol in manifest.get("protocols", {}).items():
        settings = ", ".join(f"{k} {v}" for k, v in protocol.items())
        lines.append(f"Protocol {name}: {settings}.")
    if results_text(results_path) is None:
        lines.append("No results table has been written yet; the table below is the manifest's.")
    return "\n\n".join(lines)


def results_figure(manifest: dict, x_axis: str = "ratio", test_set: str = "set5") -> go.Figure:
    """Stored PSNR against pruning ratio (or non-zero weights), one line per arch/scale/method.

    Each pruned method's line starts at its dense model (ratio 0). Checkpoints without a
    score on ``test_set`` are left out; an empty zoo gives an empty chart that says so.
    """
    if x_axis not in ("ratio", "nonzeros"):
        raise IsspError(f"x axis must be 'ratio' or 'nonzeros', got {echo(x_axis)}")
    if test_set not in TEST_SETS:
        raise IsspError(f"test set must be one of {', '.join(TEST_SETS)}, got {echo(test_set)}")
    scored = [r for r in manifest["checkpoints"] if "psnr" in r.get(test_set, {})]
    dense = {(r["arch"], r["scale"]): r for r in scored if r["method"] == "dense"}
    lines: dict[tuple, list[dict]] = {}
    for record in scored:
        if record["method"] != "dense":
            key = (record["arch"], record["scale"], record["method"])
            lines.setdefault(key, []).append(record)
    # A zoo whose pruned checkpoints are not trained yet still shows its dense points.
    for key in dense:
        if not any(line[:2] == key for line in lines):
            lines[(*key, "dense")] = []
    figure = go.Figure()
    pairs = sorted({key[:2] for key in lines})
    dashes = {pair: DASHES[i % len(DASHES)] for i, pair in enumerate(pairs)}
    for arch, scale, method in sorted(lines):
        start = [dense[(arch, scale)]] if (arch, scale) in dense else []
        records = start + sorted(lines[(arch, scale, method)], key=lambda r: r["ratio"])
        figure.add_trace(
            go.Scatter(
                x=[r["ratio"] if x_axis == "ratio" else r["nonzeros"] for r in records],
                y=[r[test_set]["psnr"] for r in records],
                mode="lines+markers",
                name=f"{arch} x{scale} {METHOD_LABELS.get(method, method)}",
                line={"color": METHOD_COLOURS.get(method), "dash": dashes[(arch, scale)]},
                customdata=[[r["file"], r[test_set].get("ssim")] for r in records],
                hovertemplate="%{customdata[0]}<br>PSNR %{y:.2f} dB, SSIM %{customdata[1]}",
            )
        )
    figure.update_layout(
        title=f"{test_set.capitalize()} PSNR of the zoo",
        xaxis_title="pruning ratio" if x_axis == "ratio" else "non-zero weights",
        yaxis_title="PSNR (dB, Y channel)",
        template="plotly_white",
    )
    if x_axis == "nonzeros":
        figure.update_xaxes(type="log")
    if not scored:
        figure.add_annotation(text=f"no stored {test_set.capitalize()} scores yet", showarrow=False)
    return figure


def make_examples(out_dir: str | Path, count: int = 4, side: int = 160) -> list[Path]:
    """Small centre crops of photos shipped in installed packages, for the examples row.

    Crops stay small so an example upscales in a moment even on a busy CPU.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in default_image_paths()[:count]:
        crop = _centre_crop(load_image(source).convert("RGB"), side)
        path = out_dir / f"{source.stem}.png"
        crop.save(path)
        paths.append(path)
    return paths
