"""The checkpoint zoo as it lies on disk: its folders, its manifest and loading one model.

``checkpoints/manifest.json`` lists every checkpoint with how it was trained, its sha256,
size, FLOPs and scores. :class:`Manifest` and :class:`Record` are that file as types:
``from_json`` reads it, ``to_json`` writes it back unchanged. Reading the catalogue imports
no training code; the build that writes it is :mod:`issp.zoo`, the tables made from it
:mod:`issp.zoo_report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from torch import nn

from issp import IsspError
from issp.checkpoint import load_checkpoint, sha256
from issp.files import write_text

ROOT = Path(__file__).resolve().parents[1]
# The source checkout's zoo; an installed wheel has none (see zoo_folder).
ZOO_DIR = ROOT / "checkpoints"
# Names the zoo to serve instead of ZOO_DIR, and the one way to give a wheel install one.
ZOO_ENV = "ISSP_ZOO_DIR"
NO_ZOO = (
    f"no model zoo found: set {ZOO_ENV} to the folder holding manifest.json "
    "(the repository's checkpoints/)"
)
MANIFEST_NAME = "manifest.json"  # in every zoo folder
MANIFEST = ZOO_DIR / MANIFEST_NAME
# The checkout's zoo keeps its telemetry and results here, committed; any other zoo in its
# own folder (see telemetry_folder and results_file).
TELEMETRY_DIR = ROOT / "analysis" / "telemetry"
RESULTS = ROOT / "analysis" / "results.md"
# Benchmark sets by their folder names; a record keys their scores by score_key.
TEST_SETS = ("Set5", "Set14")
# FLOPs are counted for an LR input of this size.
FLOPS_INPUT = (256, 256)


def score_key(name: str) -> str:
    """How a test set's scores are keyed in the manifest and the app (``Set5`` -> ``set5``)."""
    return name.lower()


SCORE_KEYS = tuple(score_key(name) for name in TEST_SETS)


@dataclass(frozen=True)
class ZooEntry:
    """Which checkpoint: architecture, scale, method and ratio, and the file name they give."""

    arch: str
    scale: int
    method: str
    ratio: float

    @property
    def name(self) -> str:
        if self.method == "dense":
            return f"{self.arch}_x{self.scale}_dense"
        return f"{self.arch}_x{self.scale}_{self.method}_r{self.ratio:g}"

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"


@dataclass(frozen=True)
class Score:
    """Mean PSNR (dB) and SSIM on one test set, Y channel, border = scale."""

    psnr: float
    ssim: float


@dataclass(frozen=True, kw_only=True)
class Record:
    """One checkpoint of the manifest. Fields in the order the file has them."""

    file: str
    arch: str
    scale: int
    method: str
    ratio: float
    alpha: float | None = None  # ISS-P's; None for the other methods
    protocol: str | None = None  # train.PROTOCOLS' name; the first zoo's records lack it
    steps: int | None = None
    prune_steps: int | None = None
    seed: int | None = None
    sha256: str
    params: int
    nonzeros: int
    flops_input: tuple[int, int] | None = None
    flops_dense: float
    flops_sparse: float
    device: str | None = None
    data: str | None = None
    train_seconds: float | None = None  # over every session of a resumed run
    scores: dict[str, Score] = field(default_factory=dict)  # by score_key

    @property
    def entry(self) -> ZooEntry:
        return ZooEntry(self.arch, self.scale, self.method, self.ratio)

    @classmethod
    def from_json(cls, data: object) -> Record:
        """The record a manifest entry describes; IsspError saying what is wrong with it."""
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), kind) for key, kind in REQUIRED.items()
        ):
            raise IsspError(f"lacks one of {', '.join(REQUIRED)}")
        for key, kind in OPTIONAL.items():
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise IsspError(f"has a malformed {key}")
        scores = {}
        for key in SCORE_KEYS:
            if key in data:
                try:
                    scores[key] = Score(float(data[key]["psnr"]), float(data[key]["ssim"]))
                except (KeyError, TypeError, ValueError):
                    raise IsspError(f"has malformed {key} scores") from None
        values = {key: data[key] for key in (*REQUIRED, *OPTIONAL) if data.get(key) is not None}
        if "flops_input" in values:
            values["flops_input"] = tuple(values["flops_input"])
        return cls(**values, scores=scores)

    def to_json(self) -> dict:
        """The manifest entry, in the order of the fields; ``alpha`` is written even when
        None, other unknowns are not."""
        data = {key: getattr(self, key) for key in FIELDS}
        if self.flops_input is not None:
            data["flops_input"] = list(self.flops_input)
        data |= {key: {"psnr": s.psnr, "ssim": s.ssim} for key, s in self.scores.items()}
        return {key: value for key, value in data.items() if value is not None or key == "alpha"}


def _json_kind(hint: object) -> type | tuple[type, ...]:
    """The JSON type a field annotated ``hint`` is stored as (None aside)."""
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    base = typing.get_origin(kinds[0]) or kinds[0]
    return {float: (int, float), tuple: list}.get(base, base)


# A record's JSON fields, from Record's own: those without a default must be present for it
# to be served and described; the rest is provenance. Scores are keyed apart (SCORE_KEYS).
_HINTS = typing.get_type_hints(Record)
FIELDS = [item.name for item in dataclasses.fields(Record) if item.name != "scores"]
REQUIRED = {
    item.name: _json_kind(_HINTS[item.name])
    for item in dataclasses.fields(Record)
    if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
}
OPTIONAL = {key: _json_kind(_HINTS[key]) for key in FIELDS if key not in REQUIRED}


def protocol_key(arch: str, scale: int) -> str:
    """How the manifest's ``protocols`` name an (arch, scale): ``edsr-tiny x2``."""
    return f"{arch} x{scale}"


@dataclass
class Manifest:
    """The zoo's records, the build's protocol per arch and scale (its settings by name, as
    trained), and ISS-P's alpha."""

    checkpoints: list[Record] = field(default_factory=list)
    protocols: dict[str, dict] = field(default_factory=dict)
    alpha: float | None = None

    @classmethod
    def from_json(
        cls, data: object, malformed: Callable[[int, IsspError], None] | None = None
    ) -> Manifest:
        """The manifest ``data`` describes. A malformed record raises IsspError, or, given
        ``malformed``, is handed to it with its 0-based index and left out."""
        if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), list):
            raise IsspError("has no list of checkpoints")
        protocols, alpha = data.get("protocols", {}), data.get("alpha")
        if not isinstance(protocols, dict) or not isinstance(alpha, int | float | None):
            raise IsspError("has malformed protocols or alpha")
        records = []
        for index, item in enumerate(data["checkpoints"]):
            try:
                records.append(Record.from_json(item))
            except IsspError as err:
                if malformed is None:
                    raise IsspError(f"manifest record {index + 1} {err}") from None
                malformed(index, err)
        return cls(records, protocols, alpha)

    def to_json(self) -> dict:
        data: dict = {"checkpoints": [record.to_json() for record in self.checkpoints]}
        if self.protocols:
            data["protocols"] = self.protocols
        if self.alpha is not None:
            data["alpha"] = self.alpha
        return data

    def protocol(self, arch: str, scale: int) -> dict:
        """The settings every method of (arch, scale) was trained with, by the names
        ``issp.zoo.protocol_settings`` gives them; empty where the build recorded none."""
        return self.protocols.get(protocol_key(arch, scale), {})

    def find(self, arch: str, scale: int, method: str, ratio: float) -> Record:
        """The record of one model; ratio 0 means the dense model of any method."""
        if ratio == 0:
            method = "dense"
        for record in self.checkpoints:
            if (record.arch, record.scale, record.method) == (arch, scale, method) and (
                abs(record.ratio - ratio) < 1e-9
            ):
                return record
        have = sorted({r.ratio for r in self.checkpoints if (r.arch, r.scale) == (arch, scale)})
        raise IsspError(
            f"no {method} checkpoint of {arch} x{scale} at ratio {ratio:g} "
            f"(available ratios: {', '.join(f'{r:g}' for r in have) or 'none'})"
        )


def zoo_folder() -> Path:
    """The checkpoint folder in use: ``$ISSP_ZOO_DIR`` if set, else the source checkout's
    ``checkpoints/``; IsspError when neither is set or there (a wheel ships no zoo)."""
    configured = os.environ.get(ZOO_ENV)
    if configured:
        return Path(configured)
    if not ZOO_DIR.is_dir():
        raise IsspError(NO_ZOO)
    return ZOO_DIR


def is_checkout_zoo(zoo_dir: Path) -> bool:
    """Whether ``zoo_dir`` is the source checkout's ``checkpoints/``, whose telemetry and
    results table lie in ``analysis/``; any other zoo keeps its own in its folder."""
    return zoo_dir.resolve() == ZOO_DIR.resolve()


def telemetry_folder(zoo_dir: Path) -> Path:
    """Where the zoo in ``zoo_dir`` keeps each run's telemetry (``<entry name>.npz``)."""
    return TELEMETRY_DIR if is_checkout_zoo(zoo_dir) else zoo_dir / "telemetry"


def results_file(zoo_dir: Path) -> Path:
    """Where the results table of the zoo in ``zoo_dir`` is written and served from."""
    return RESULTS if is_checkout_zoo(zoo_dir) else zoo_dir / "results.md"


def load_manifest(
    path: Path | None = None, malformed: Callable[[int, IsspError], None] | None = None
) -> Manifest:
    """The manifest at ``path`` (default: the zoo's), or an empty one if none was written.

    Raises OSError or ValueError for a file that cannot be read as JSON, IsspError for
    JSON that is no manifest (see :meth:`Manifest.from_json` for ``malformed``).
    """
    path = path or MANIFEST
    if not path.exists():
        return Manifest()
    return Manifest.from_json(json.loads(path.read_text()), malformed)


def read_manifest(path: Path) -> Manifest:
    """:func:`load_manifest` for a command: IsspError naming the file if it cannot be read."""
    try:
        return load_manifest(path)
    except (OSError, ValueError) as error:
        raise IsspError(f"{path} could not be read ({error})") from None


@contextlib.contextmanager
def updating_manifest(path: Path | None = None) -> Iterator[Manifest]:
    """Yield the manifest at ``path`` (default: the zoo's) and write it back, holding a
    lock throughout.

    Several builds may run side by side (one per core) while ``zoo eval`` refreshes the
    scores: each reads the manifest under the lock, so none overwrites another's records.
    """
    path = path or MANIFEST
    with FileLock(path.with_suffix(".lock")):
        manifest = read_manifest(path)
        yield manifest
        write_text(path, json.dumps(manifest.to_json(), indent=2) + "\n")


def load_zoo_model(
    arch: str,
    scale: int,
    method: str,
    ratio: float,
    manifest: Manifest | None = None,
    zoo_dir: Path | None = None,
) -> tuple[nn.Module, Record]:
    """Load a zoo checkpoint from ``zoo_dir`` after checking its sha256 against the manifest.

    Without ``zoo_dir``, the zoo in use (:func:`zoo_folder`); without ``manifest``, the one
    in ``zoo_dir``, which must be there.
    """
    zoo_dir = zoo_folder() if zoo_dir is None else zoo_dir
    if manifest is None:
        path = zoo_dir / MANIFEST_NAME
        if not path.is_file():
            raise IsspError(f"{NO_ZOO}; {path} does not exist")
        manifest = read_manifest(path)
    record = manifest.find(arch, scale, method.lower(), ratio)
    path = zoo_dir / record.file
    if not path.exists():
        raise IsspError(f"{path} is listed in the manifest but missing")
    if sha256(path) != record.sha256:
        raise IsspError(f"{path} does not match the manifest's sha256; refusing to load it")
    model, _ = load_checkpoint(path, scale=scale, arch=arch)
    return model, record
