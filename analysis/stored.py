"""The zoo's stored telemetry as ``Dynamics``, to plot full-length runs without training.

``python -m issp zoo build`` writes one ``analysis/telemetry/<checkpoint-name>.npz`` per
checkpoint (the arrays of ``issp.train.save_telemetry``). Runs of the same architecture,
scale and ratio share the seed, data order and Kp, so ISS-P and IHT load side by side
into the same structure the live comparison yields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.lockstep import Dynamics, Series
from issp import IsspError
from issp.catalogue import TELEMETRY_DIR, Manifest, ZooEntry, load_manifest
from issp.methods import COMPARED
from issp.pruning import TELEMETRY_KEYS
from issp.zoo import entry_config

# Checkpoint names as ZooEntry.name writes them: edsr-tiny_x2_issp_r0.9, edsr-tiny_x2_dense.
_NAME = re.compile(
    r"(?P<arch>.+)_x(?P<scale>\d+)_(?:dense|(?P<method>[a-z0-9]+)_r(?P<ratio>[\d.e-]+))"
)


@dataclass(frozen=True)
class StoredTelemetry:
    """One stored telemetry file and the zoo checkpoint it belongs to."""

    entry: ZooEntry
    path: Path

    @property
    def name(self) -> str:
        return self.entry.name


def list_stored(directory: str | Path = TELEMETRY_DIR) -> list[StoredTelemetry]:
    """Every stored run whose file name is a zoo checkpoint name, sorted by name."""
    runs = []
    for path in sorted(Path(directory).glob("*.npz")):
        match = _NAME.fullmatch(path.stem)
        if match is None:
            continue
        method = match["method"] or "dense"
        ratio = float(match["ratio"]) if match["ratio"] else 0.0
        runs.append(
            StoredTelemetry(ZooEntry(match["arch"], int(match["scale"]), method, ratio), path)
        )
    return runs


def stored_pairs(directory: str | Path = TELEMETRY_DIR) -> list[tuple[str, int, float]]:
    """``(arch, scale, ratio)`` of every setting stored for both ISS-P and IHT."""
    have = {
        (r.entry.arch, r.entry.scale, r.entry.ratio, r.entry.method) for r in list_stored(directory)
    }
    return sorted(
        (arch, scale, ratio)
        for arch, scale, ratio, method in have
        if method == "issp" and (arch, scale, ratio, "iht") in have
    )


def load_stored(
    arch: str,
    scale: int,
    ratio: float,
    methods: Sequence[str] = COMPARED,
    directory: str | Path = TELEMETRY_DIR,
    manifest: Manifest | None = None,
) -> Dynamics:
    """The stored runs of ``methods`` at one (arch, scale, ratio) as one ``Dynamics``.

    ``dense`` loads the setting's dense run whatever the ratio. ``manifest`` is the zoo's
    whose telemetry ``directory`` holds (None: the checkout's, whose ``TELEMETRY_DIR`` is
    the default). What the telemetry does not record comes from it (:func:`_trained`).
    Raises IsspError when a run is missing or the runs disagree on their layers, Kp or
    schedule.
    """
    if not methods:
        raise IsspError("name at least one method to load")
    if len(set(methods)) != len(methods):
        raise IsspError(f"each method may appear once, got {', '.join(methods)}")
    available = {run.name: run for run in list_stored(directory)}
    manifest = load_manifest() if manifest is None else manifest
    layers: list[str] = []
    series, trained = {}, {}
    for method in methods:
        entry = ZooEntry(arch, scale, method, 0.0 if method == "dense" else ratio)
        if entry.name not in available:
            have = ", ".join(sorted(available)) or "none"
            raise IsspError(f"no stored telemetry for {entry.name} (stored: {have})")
        run_layers, series[method] = _read(available[entry.name].path)
        if layers and run_layers != layers:
            raise IsspError(f"{entry.name} has other layers than the {methods[0]} run")
        layers = run_layers
        trained[method] = _trained(manifest, entry)
    kps = {t.prune_steps for t in trained.values()}
    if len(kps) > 1:
        raise IsspError(f"the stored runs were trained with different Kp ({sorted(kps)})")
    schedules = {(t.protocol, t.lr) for t in trained.values()}
    if len(schedules) > 1:
        raise IsspError(f"the stored runs were trained on different schedules ({schedules})")
    (protocol, lr), steps = schedules.pop(), max(len(s.loss) for s in series.values())
    # Only a recorded schedule is drawn (lockstep.learning_rates reads these two).
    schedule = {} if protocol is None or lr is None else {"protocol": protocol, "lr": lr}
    return Dynamics(
        config={
            "arch": arch,
            "scale": scale,
            "ratio": ratio,
            "alpha": trained["issp"].alpha if "issp" in trained else None,
            "steps": steps,
            "prune_steps": kps.pop(),
            **schedule,
            "methods": list(methods),
            "source": "stored",
        },
        layers=layers,
        series=series,
        step=steps,
        finished=True,
    )


@dataclass(frozen=True)
class Trained:
    """What a stored run was trained with that its telemetry file does not record."""

    prune_steps: int  # Kp
    alpha: float | None  # ISS-P's
    protocol: str | None  # issp.train.PROTOCOLS' name; None where not recorded
    lr: float | None  # the initial learning rate; None where not recorded


def _trained(manifest: Manifest, entry: ZooEntry) -> Trained:
    """How a stored run was trained: its manifest record, with the learning rate of its
    (arch, scale)'s protocol record (the first zoo recorded neither protocol nor rate).
    Without a record that says its Kp, its protocol record alone (every method of an
    (arch, scale) is trained alike), else as this code's zoo build trains it."""
    shared = manifest.protocol(entry.arch, entry.scale)
    try:
        record = manifest.find(entry.arch, entry.scale, entry.method, entry.ratio)
    except IsspError:
        record = None
    if record is not None and record.prune_steps is not None:
        lr = shared.get("lr") if shared.get("protocol") == record.protocol else None
        return Trained(record.prune_steps, record.alpha, record.protocol, lr)
    if {"prune_steps", "alpha", "protocol", "lr"} <= shared.keys():
        return Trained(shared["prune_steps"], shared["alpha"], shared["protocol"], shared["lr"])
    config = entry_config(entry, None, "cpu")
    return Trained(config.kp, config.alpha, config.protocol, config.lr)


def _read(path: Path) -> tuple[list[str], Series]:
    """Layer names and series of one ``save_telemetry`` file."""
    try:
        with np.load(path) as data:
            layers = [str(name) for name in data["layers"]]
            series = Series(
                loss=data["loss"].astype(np.float32),
                psnr_steps=data["val_steps"].astype(np.int64),
                psnr=data["val_psnr"].astype(np.float32),
                **{key: data[key].astype(np.float32) for key in TELEMETRY_KEYS},
            )
    except (OSError, KeyError, ValueError) as err:
        raise IsspError(f"{path}: not a telemetry file ({err})") from err
    return layers, series
