"""ISS-P against IHT (and dense, GMP) live, in lockstep.

Every method starts from the same initialised network (one model built with the seed,
deep-copied per method) and is fed the same batch at every step, so the only difference
between the runs is the pruning rule. ``run_lockstep`` yields a ``Dynamics`` snapshot
every few steps: per method the loss, the validation PSNR and the pruner's per-layer
telemetry (mask flips, gradient norms, sparsity, mean |w| of kept and selected weights),
plus a sample of current |w| for the kept-versus-selected histogram.

The paper's explanation of why ISS-P beats IHT is about these dynamics: shrinking the
selected weights by ``alpha`` instead of zeroing them keeps the sparse structure moving
(mask entries flip) and the gradients flowing, where IHT's zeroed weights rarely climb
back above the threshold and its mask freezes early.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from issp import IsspError
from issp.evaluate import Pair, evaluate_arrays, validation_crops
from issp.methods import COMPARED, LOCKSTEP, label
from issp.models import build_model
from issp.pruning import MAGNITUDE, TELEMETRY_KEYS
from issp.train import (
    DEFAULT_PROTOCOL,
    TrainConfig,
    batch_loader,
    learning_rate,
    patch_dataset,
    setup_run,
    train_step,
    training_images,
)

MAX_STEPS = 2000
LIVE_PROTOCOL = DEFAULT_PROTOCOL
# |w| values kept per method for the histogram: enough for a smooth shape, small in JSON.
WEIGHT_SAMPLE = 10_000
# What a live comparison trains unless told: the live protocol as ``issp train`` runs it.
# LockstepConfig's shared defaults are read from it, so the two cannot drift apart.
LIVE_TRAINING = TrainConfig.of_protocol(LIVE_PROTOCOL)
TRAIN_FIELDS = frozenset(spec.name for spec in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class LockstepConfig:
    """A live comparison. Every field named as a ``TrainConfig`` field is one, defaulting
    to ``LIVE_TRAINING``'s, except where a comment says why a live run differs; the rest
    (``methods``, ``val_crop``, ``threads``) is the comparison's own."""

    arch: str = LIVE_TRAINING.arch
    scale: int = LIVE_TRAINING.scale
    ratio: float = LIVE_TRAINING.ratio
    # The two-stage protocol (the authors' code, with the learning rate and alpha the
    # validation grid chose): a visitor's first run shows the paper's regime.
    alpha: float = LIVE_TRAINING.alpha
    # Live: a run to watch. Steps, batch and patch are small enough for two methods in
    # lockstep at 10+ steps per second on two CPU cores (benchmarks/telemetry_overhead.py).
    steps: int = 300
    prune_steps: int | None = LIVE_TRAINING.prune_steps  # Kp; None: the protocol's share of steps
    # "N:M" shapes the selection of the magnitude methods (ISS-P, IHT, GMP); the others
    # (dense, RigL) run as they do without one. None: per layer.
    pattern: str | None = LIVE_TRAINING.pattern
    seed: int = LIVE_TRAINING.seed
    methods: tuple[str, ...] = COMPARED
    batch_size: int = 4  # live: see steps
    patch: int = 24  # LR patch side; live: see steps
    lr: float = LIVE_TRAINING.lr
    protocol: str = LIVE_TRAINING.protocol  # schedule, Kp fraction, Adam betas, pruned layers
    val_every: int = 25  # live: often enough for a 300-step run to draw a PSNR curve
    val_crop: int = 96  # HR side of the centre crops PSNR is measured on
    data: str | None = LIVE_TRAINING.data  # None: photos shipped in installed packages
    # Torch threads while the run lives. Batches this small run fastest on one: on a busy
    # two-core machine two threads made a step over 20 times slower.
    threads: int = 1

    def train_config(self) -> TrainConfig:
        """The training settings shared by every method (the method itself is per run).

        The batches are loaded in the training thread (``workers=0``): a live run is one
        short job among a server's requests, not worth a loader process."""
        shared = {
            spec.name: getattr(self, spec.name)
            for spec in dataclasses.fields(self)
            if spec.name in TRAIN_FIELDS
        }
        return TrainConfig.of_protocol(self.protocol, **shared, workers=0)

    def method_config(self, method: str) -> TrainConfig:
        """``train_config`` as ``method`` trains: a pattern only where it shapes a
        magnitude selection (``issp.pruning.MAGNITUDE``)."""
        config = dataclasses.replace(self.train_config(), method=method)
        if method not in MAGNITUDE:
            config = dataclasses.replace(config, pattern=None)
        return config

    def validate(self) -> None:
        """Raise IsspError for settings no comparison could use."""
        if not self.methods:
            raise IsspError("name at least one method to compare")
        unknown = [m for m in self.methods if m not in LOCKSTEP]
        if unknown:
            raise IsspError(f"unknown method {unknown[0]!r}; choose from {', '.join(LOCKSTEP)}")
        if len(set(self.methods)) != len(self.methods):
            raise IsspError(f"each method may appear once, got {', '.join(self.methods)}")
        if self.steps > MAX_STEPS:
            raise IsspError(
                f"a live comparison runs at most {MAX_STEPS} steps, got {self.steps}; "
                "use `python -m issp train` for longer runs"
            )
        if not self.lr > 0:
            raise IsspError(f"learning rate must be positive, got {self.lr}")
        if self.val_every < 1:
            raise IsspError(f"val_every must be at least 1, got {self.val_every}")
        if self.threads < 1:
            raise IsspError(f"threads must be at least 1, got {self.threads}")
        if self.val_crop < 32:
            raise IsspError(f"val_crop must be at least 32 px, got {self.val_crop}")
        # The pattern is checked against the ratio even when no method of the run uses it.
        self.train_config().validate()
        for method in self.methods:
            self.method_config(method).validate()


@dataclass
class Series:
    """One method's recorded dynamics. Per-layer arrays have shape (steps, layers)."""

    loss: np.ndarray
    psnr_steps: np.ndarray
    psnr: np.ndarray
    flips: np.ndarray
    grad_norm: np.ndarray
    sparsity: np.ndarray
    kept_abs: np.ndarray
    selected_abs: np.ndarray
    # A fixed random sample of current |w|, split by the pruner's selection; None when the
    # source recorded no weights (stored runs).
    kept_weights: np.ndarray | None = None
    selected_weights: np.ndarray | None = None


@dataclass
class Dynamics:
    """Several methods' dynamics on the same layers: a live snapshot, a stored run or JSON.

    ``config`` holds plain values; ``arch``, ``scale``, ``ratio``, ``steps`` and
    ``prune_steps`` (Kp) are always present, ``alpha`` when ISS-P is among the methods.
    """

    config: dict
    layers: list[str]
    series: dict[str, Series]
    step: int
    finished: bool = False


class _MethodRun:
    """One method's training run inside a lockstep comparison, and what it recorded."""

    def __init__(self, model: nn.Module, config: TrainConfig) -> None:
        self.method = config.method
        self.run = setup_run(config, model)
        self.model = self.run.model
        self.pruner = self.run.pruner
        self.loss: list[float] = []
        self.psnr_steps: list[int] = []
        self.psnr: list[float] = []

    def train_step(self, lr_batch: torch.Tensor, hr_batch: torch.Tensor, step: int) -> None:
        self.loss.append(train_step(self.run, lr_batch, hr_batch, step))

    def validate(self, step: int, val_set: list[Pair], scale: int) -> None:
        self.model.eval()
        self.psnr_steps.append(step)
        self.psnr.append(evaluate_arrays(self.model, val_set, scale)["psnr"])
        self.model.train()

    def series(self, sample: torch.Tensor) -> Series:
        telemetry = self.pruner.telemetry()
        with torch.no_grad():
            absw = torch.cat([w.abs().flatten() for w in self.pruner.weights.values()])[sample]
            if self.pruner.masks is None:
                selected = torch.zeros_like(absw, dtype=torch.bool)
            else:
                selected = torch.cat([m.flatten() for m in self.pruner.masks.values()])[sample]
        return Series(
            loss=np.asarray(self.loss, np.float32),
            psnr_steps=np.asarray(self.psnr_steps, np.int64),
            psnr=np.asarray(self.psnr, np.float32),
            kept_weights=absw[~selected].numpy(),
            selected_weights=absw[selected].numpy(),
            **telemetry,
        )


def run_lockstep(
    config: LockstepConfig, stop: threading.Event | None = None, every: int = 5
) -> Iterator[Dynamics]:
    """Train ``config.methods`` side by side and yield a snapshot every ``every`` steps.

    The last snapshot (``finished=True``) comes after step ``config.steps``. ``stop`` is
    checked before every step; once it is set the generator returns at once, without a
    further snapshot. Validation PSNR is measured every ``config.val_every`` steps and at
    the end, on centre crops of the held-out images (the same split as training).

    Torch runs with ``config.threads`` threads until the generator ends, then gets its
    previous setting back.
    """
    config.validate()
    if every < 1:
        raise IsspError(f"snapshot interval must be at least 1 step, got {every}")
    previous = torch.get_num_threads()
    try:
        yield from _lockstep(config, stop, every)
    finally:
        torch.set_num_threads(previous)


def _lockstep(
    config: LockstepConfig, stop: threading.Event | None, every: int
) -> Iterator[Dynamics]:
    torch.set_num_threads(config.threads)
    train_config = config.train_config()
    kp = train_config.kp
    train_paths, val_paths, _ = training_images(train_config)
    dataset = patch_dataset(train_config, train_paths)
    val_set = validation_crops(val_paths, config.scale, size=config.val_crop)
    torch.manual_seed(config.seed)
    initial = build_model(config.arch, config.scale)
    runs = [
        _MethodRun(copy.deepcopy(initial), config.method_config(method))
        for method in config.methods
    ]
    layers = runs[0].pruner.names
    n_weights = sum(w.numel() for w in runs[0].pruner.weights.values())
    generator = torch.Generator().manual_seed(config.seed)
    sample = torch.randperm(n_weights, generator=generator)[:WEIGHT_SAMPLE]
    plain = dataclasses.asdict(config) | {"methods": list(config.methods), "prune_steps": kp}

    def snapshot(step: int) -> Dynamics:
        series = {run.method: run.series(sample) for run in runs}
        return Dynamics(dict(plain), list(layers), series, step, finished=step == config.steps)

    for run in runs:
        run.model.train()
    for step, (lr_batch, hr_batch) in enumerate(batch_loader(dataset, train_config, 0, 0, 1), 1):
        if stop is not None and stop.is_set():
            return
        for run in runs:
            run.train_step(lr_batch, hr_batch, step - 1)
        if step % config.val_every == 0 or step == config.steps:
            for run in runs:
                run.validate(step, val_set, config.scale)
        if step % every == 0 or step == config.steps:
            yield snapshot(step)
            # OpenMP thread counts are per OS thread, and a UI may resume us on another one.
            torch.set_num_threads(config.threads)


def run_to_end(config: LockstepConfig, stop: threading.Event | None = None) -> Dynamics | None:
    """The final snapshot of ``run_lockstep``, or None if ``stop`` ended it early."""
    for snapshot in run_lockstep(config, stop, every=config.steps):
        if snapshot.finished:
            return snapshot
    return None


def learning_rates(config: dict) -> np.ndarray | None:
    """The learning rate of every step of a run described by ``Dynamics.config``, or None
    where the config does not say its protocol and rate (runs stored before they did)."""
    if "protocol" not in config or "lr" not in config:
        return None
    train_config = TrainConfig.of_protocol(
        config["protocol"],
        lr=float(config["lr"]),
        steps=int(config["steps"]),
        prune_steps=int(config["prune_steps"]),
    )
    return np.array([learning_rate(train_config, step) for step in range(train_config.steps)])


def gradient_spread(grad_norm: np.ndarray) -> np.ndarray:
    """Per step, how unevenly the gradient is spread over layers: std / mean of the
    per-layer gradient L2 norms (0 when every layer gets the same norm)."""
    mean = grad_norm.mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, grad_norm.std(axis=1) / mean, np.nan)


def summarize(dynamics: Dynamics) -> str:
    """A few plain sentences comparing the methods, computed from the recorded series."""
    config, series = dynamics.config, dynamics.series
    kp = int(config["prune_steps"])
    names = list(series)
    alpha = f", alpha {config['alpha']:g}" if "issp" in series else ""
    # Runs recorded before the pattern was a setting (and stored runs) were per layer.
    pattern = f" in {config['pattern']} groups" if config.get("pattern") else ""
    lines = [
        f"{config['arch']} x{config['scale']}, ratio {config['ratio']:g}{pattern}{alpha}, "
        f"Kp = {kp}: {dynamics.step:,} of {int(config['steps']):,} steps."
    ]
    flips = [f"{label(m)} {int(np.nansum(series[m].flips)):,}" for m in names]
    lines.append(f"Mask entries flipped: {', '.join(flips)}.")
    psnr = [f"{label(m)} {series[m].psnr[-1]:.2f}" for m in names if len(series[m].psnr)]
    if psnr:
        lines.append(f"Last validation PSNR (dB): {', '.join(psnr)}.")
    loss = [f"{label(m)} {_tail_mean(series[m].loss):.4f}" for m in names if len(series[m].loss)]
    if loss:
        lines.append(f"L1 loss over the last 10% of steps: {', '.join(loss)}.")
    spread = []
    for m in names:
        pruning = series[m].grad_norm[: max(kp - 1, 1)]
        if len(pruning):
            spread.append(f"{label(m)} {np.nanmean(gradient_spread(pruning)):.2f}")
    if spread:
        lines.append(
            "Gradient-norm spread across layers during pruning (std/mean, lower is more "
            f"even): {', '.join(spread)}."
        )
    return "\n".join(lines)


def _tail_mean(values: np.ndarray) -> float:
    return float(np.mean(values[-max(len(values) // 10, 1) :]))


def to_json(dynamics: Dynamics) -> dict:
    """JSON-safe form: per method ``loss``, ``psnr_steps``, ``psnr`` and ``{layer: series}``
    for each telemetry key, plus the config and the summary. NaN becomes None."""
    methods = {}
    for method, s in dynamics.series.items():
        entry = {
            "loss": _floats(s.loss),
            "psnr_steps": [int(v) for v in s.psnr_steps],
            "psnr": _floats(s.psnr),
        }
        for key in TELEMETRY_KEYS:
            values = getattr(s, key)
            # Flips are counts; written as integers they read as what they are.
            convert = _ints if key == "flips" else _floats
            entry[key] = {name: convert(values[:, i]) for i, name in enumerate(dynamics.layers)}
        if s.kept_weights is not None:
            entry["weights"] = {
                "kept": _floats(s.kept_weights),
                "selected": _floats(s.selected_weights),
            }
        methods[method] = entry
    return {
        "config": dynamics.config,
        "summary": summarize(dynamics),
        "step": dynamics.step,
        "finished": dynamics.finished,
        "layers": list(dynamics.layers),
        "methods": methods,
    }


def from_json(data: dict) -> Dynamics:
    """Rebuild the ``Dynamics`` that ``to_json`` wrote; IsspError if keys are missing."""
    try:
        layers = list(data["layers"])
        series = {}
        for method, entry in data["methods"].items():
            per_layer = {
                key: _array([entry[key][name] for name in layers]).T for key in TELEMETRY_KEYS
            }
            weights = entry.get("weights")
            series[method] = Series(
                loss=_array(entry["loss"]),
                psnr_steps=np.asarray(entry["psnr_steps"], np.int64),
                psnr=_array(entry["psnr"]),
                kept_weights=_array(weights["kept"]) if weights else None,
                selected_weights=_array(weights["selected"]) if weights else None,
                **per_layer,
            )
        return Dynamics(
            dict(data["config"]),
            layers,
            series,
            int(data["step"]),
            finished=bool(data.get("finished", True)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise IsspError(f"not an `issp analyze` result: {err!r}") from err


def _floats(values: np.ndarray) -> list[float | None]:
    # Seven significant digits is float32's precision; more only bloats the file.
    return [float(f"{v:.7g}") if math.isfinite(v) else None for v in np.asarray(values).tolist()]


def _ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(values).tolist()]


def _array(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def alpha_sweep(
    config: LockstepConfig, alphas: Sequence[float], stop: threading.Event | None = None
) -> Iterator[list[dict]]:
    """Run ``config`` once per alpha (ISS-P; alpha 0 is IHT) and yield the table so far.

    Each row is ``{"alpha", "method", "flips", "psnr"}``: total mask flips and the final
    validation PSNR. Every run uses the same seed, so the same initial weights and batches.
    """
    if not alphas:
        raise IsspError("name at least one alpha")
    for alpha in alphas:
        if not 0 <= alpha < 1:
            raise IsspError(f"alpha must be in [0, 1), got {alpha}")
    rows: list[dict] = []
    for alpha in alphas:
        method = "issp" if alpha > 0 else "iht"
        run = dataclasses.replace(config, methods=(method,), alpha=alpha or config.alpha)
        final = run_to_end(run, stop)
        if final is None:
            return
        series = final.series[method]
        rows.append(
            {
                "alpha": alpha,
                "method": method,
                "flips": int(np.nansum(series.flips)),
                "psnr": float(series.psnr[-1]),
            }
        )
        yield list(rows)
