"""The training loop: L1 loss, Adam, a learning-rate schedule, a pruner stepped after the
optimizer.

``setup_run`` builds a run's model, optimizer and pruner from a ``TrainConfig``, and
``train_step`` is the one training step: the trainer below, the live lockstep comparison
and the benchmarks all call these two, so a change to how we train is made once.

Two protocols (``PROTOCOLS``) differ in everything but the pruning rule:

- ``cosine``: the first zoo's. One cosine decay of the learning rate over the whole run,
  Kp at 60% of the steps, Adam betas (0.9, 0.999), first and last conv left dense.
- ``two-stage``: the authors' code (Jiamian-Wang/Iterative-Soft-Shrinkage-SR). The
  learning rate is constant while pruning (``keep_pruned_learning_rate``,
  ``basicsr/models/base_model.py``) and fine-tuning starts a fresh schedule at the initial
  rate that halves once, two thirds of the way (``milestones: [200000]`` of
  ``total_iter: 300000``, ``options/train/EDSR/train_EDSRL_X4_DF2K_IST_*.yml``); Kp at a
  quarter of the steps (their stopping criterion ends pruning near 100k of 400k
  iterations); Adam betas (0.9, 0.99). Two settings come from our validation grid
  (``analysis/protocol_grid.md``, ``python -m issp study grid``) instead: lr 3e-3 (theirs
  is 1e-4 for EDSR; at 1e-4 our 1000-step runs end 10 dB below bicubic) and the first and
  last conv left dense (they prune every conv, ``--skip_layers *none*``; in edsr-tiny that
  cost 1.3 dB of validation PSNR, 3-4 dB at ratio 0.99). Alpha 0.95 is theirs and the
  grid's (0.9, 0.95 and 0.99 were within 0.011 dB of each other).

Runs on one process or under ``torchrun`` (DistributedDataParallel, gloo on CPU, nccl on
GPU). Batches are a pure function of (seed, step), so a resumed or distributed run sees
the same data as an uninterrupted one. The training state is saved next to the output as
``<out>.state.pt`` (tensors and plain values only, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from issp import IsspError
from issp.checkpoint import save_checkpoint
from issp.data import PatchDataset, default_image_paths, find_images, split_train_val
from issp.evaluate import evaluate_arrays, validation_crops
from issp.files import writable
from issp.machine import available_cpus
from issp.models import PRESETS, SCALES, build_model, prefers_channels_last, preset_args
from issp.pruning import Pruner, check_alpha, check_arguments
from issp.run_files import resume_state, save_state, save_telemetry, state_path, telemetry_path
from issp.selection import PER_LAYER

SCHEDULES = ("cosine", "two-stage")
# Speed settings by name (TrainConfig fields). channels-last keeps fp32 arithmetic and only
# reorders the sums; bf16 autocasts the network's forward pass (benchmarks/train_quality.py
# measures what each does to a run's PSNR).
PRECISIONS = {
    "fp32": {"bf16": False, "channels_last": False},
    "channels-last": {"bf16": False, "channels_last": True},
    "bf16": {"bf16": True, "channels_last": True},
}


@dataclass(frozen=True)
class Protocol:
    """How every method of a comparison is trained; only the pruning rule differs."""

    name: str
    schedule: str  # one of SCHEDULES
    kp_fraction: float  # Kp as a fraction of the steps
    betas: tuple[float, float]  # Adam's
    prune_edges: bool  # prune the first and last conv too
    lr: float
    alpha: float  # ISS-P's shrink factor


# The authors' shrink factor: every ISS-P command in their README passes --ist_ratio 0.95
# (Jiamian-Wang/Iterative-Soft-Shrinkage-SR, README.md lines 138 and 187). The study's grid
# runs it at every learning rate as ISS-P's reference when it chooses the rate.
AUTHORS_ALPHA = 0.95

PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("cosine", "cosine", 0.6, (0.9, 0.999), False, lr=1e-3, alpha=0.9),
        # lr, pruned layers and alpha as the validation grid chose them (analysis/protocol_grid.md).
        Protocol("two-stage", "two-stage", 0.25, (0.9, 0.99), False, lr=3e-3, alpha=AUTHORS_ALPHA),
    )
}
# What every entry point trains unless told: the study's, the zoo's, the CLI's and the live
# tab's protocol, and ``TrainConfig``'s defaults.
DEFAULT_PROTOCOL = "two-stage"


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are ``DEFAULT_PROTOCOL`` on
    ``edsr-tiny`` and a CPU. ``TrainConfig.of_protocol`` starts from another protocol."""

    arch: str = "edsr-tiny"
    scale: int = 2
    method: str = "issp"
    ratio: float = 0.9
    alpha: float = PROTOCOLS[DEFAULT_PROTOCOL].alpha
    steps: int = 2000
    prune_steps: int | None = None  # Kp; None means kp_fraction of the steps
    batch_size: int = 16
    patch: int = 48  # LR patch side; HR patches are scale times larger
    lr: float = PROTOCOLS[DEFAULT_PROTOCOL].lr
    min_lr: float = 1e-5  # the end of the cosine schedule
    protocol: str = DEFAULT_PROTOCOL
    schedule: str = PROTOCOLS[DEFAULT_PROTOCOL].schedule
    kp_fraction: float = PROTOCOLS[DEFAULT_PROTOCOL].kp_fraction
    betas: tuple[float, float] = PROTOCOLS[DEFAULT_PROTOCOL].betas
    prune_edges: bool = PROTOCOLS[DEFAULT_PROTOCOL].prune_edges
    scope: str = "local"
    pattern: str | None = None  # "N:M": N of every M consecutive weights (issp.pruning)
    # Speed settings: bfloat16 autocast of the network's forward pass (the loss, Adam's
    # weights and the pruner's selection stay fp32), and channels-last convolutions. Both
    # are fp32-exact in what they compute but not in the order they sum it, so a run's
    # figures move by about as much as running on two threads instead of one does.
    bf16: bool = False
    channels_last: bool | None = None  # None: the architecture's faster layout
    data: str | None = None  # None: photos shipped in installed packages
    val: str | None = None  # None: a split carved out of the training images
    val_every: int = 200
    save_every: int = 200
    seed: int = 0
    device: str = "cpu"
    workers: int = 1

    def __post_init__(self) -> None:
        if self.channels_last is None:  # resolved here so that every saved config says it
            self.channels_last = self.arch in PRESETS and prefers_channels_last(self.arch)

    @classmethod
    def of_protocol(cls, name: str, **settings) -> TrainConfig:
        """A config of protocol ``name`` (see ``PROTOCOLS``), with ``settings`` on top."""
        if name not in PROTOCOLS:
            raise IsspError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
        protocol = dataclasses.asdict(PROTOCOLS[name])
        protocol["protocol"] = protocol.pop("name")
        return cls(**(protocol | settings))

    @property
    def precision(self) -> str:
        """The speed setting's name in ``PRECISIONS`` (bf16 implies its own layout)."""
        return "bf16" if self.bf16 else "channels-last" if self.channels_last else "fp32"

    @property
    def kp(self) -> int:
        if self.prune_steps is not None:
            return self.prune_steps
        return max(1, int(self.kp_fraction * self.steps))

    def validate(self) -> None:
        """Raise IsspError for arguments no run could use."""
        if self.arch not in PRESETS:
            raise IsspError(f"unknown architecture {self.arch!r}; choose from {', '.join(PRESETS)}")
        if self.scale not in SCALES:
            raise IsspError(f"scale must be one of {', '.join(map(str, SCALES))}, got {self.scale}")
        check_alpha(self.alpha)
        if self.schedule not in SCHEDULES:
            raise IsspError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule}")
        if not 0 < self.kp_fraction <= 1:
            raise IsspError(f"Kp fraction must be in (0, 1], got {self.kp_fraction}")
        if self.steps < 1 or self.kp < 1 or self.kp > self.steps:
            raise IsspError(f"need 1 <= prune-steps <= steps, got {self.kp} and {self.steps}")
        if not self.lr > 0:
            raise IsspError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size < 1 or self.patch < 8:
            raise IsspError("batch size must be >= 1 and patch >= 8")
        # What the pruner itself refuses (the ratio, N:M against method and scope), here.
        check_arguments(self.method, self.ratio, self.kp, self.alpha, self.scope, self.pattern)
        _check_device(self.device)
        if self.workers < 0 or self.seed < 0:
            raise IsspError(f"workers and seed must be >= 0, got {self.workers} and {self.seed}")


def _check_device(device: str) -> None:
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise IsspError(f"unknown device {device!r}; use cpu or cuda") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IsspError("--device cuda was asked for, but no CUDA device is available")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based) under ``config.schedule``."""
    if config.schedule == "cosine":
        progress = min(step / config.steps, 1.0)
        return config.min_lr + 0.5 * (config.lr - config.min_lr) * (
            1 + math.cos(math.pi * progress)
        )
    if step < config.kp:
        return config.lr
    fine_tune = max(config.steps - config.kp, 1)
    return config.lr * (0.5 if step - config.kp >= 2 * fine_tune / 3 else 1.0)


def training_images(config: TrainConfig) -> tuple[list[Path], list[Path], str]:
    """Training paths, validation paths and a description of the data for the metadata."""
    paths = find_images(config.data) if config.data else default_image_paths()
    source = str(config.data) if config.data else "default (photos in installed packages)"
    if config.val:
        return paths, find_images(config.val), source
    train, val = split_train_val(paths, val_fraction=0.1, seed=config.seed)
    return train, val, source


@dataclass
class TrainingState:
    """One method's training state: what ``train_step`` advances."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    pruner: Pruner
    net: nn.Module  # the model, or its DistributedDataParallel wrapper

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def setup_run(
    config: TrainConfig,
    model: nn.Module | None = None,
    method: str | None = None,
    telemetry: bool = True,
    device: torch.device | str = "cpu",
    world: int = 1,
) -> TrainingState:
    """Model, Adam and pruner of ``config`` (or of another ``method`` with its settings).

    Without ``model``, the preset is built after seeding torch with ``config.seed``, so
    every method of the same seed starts from the same weights. A ``model`` given (a copy
    of one initial network, say) is used as it is.
    """
    device = torch.device(device)
    if model is None:
        torch.manual_seed(config.seed)
        model = build_model(config.arch, config.scale)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        # DDP broadcasts buffers flat and refuses the strides channels-last gives a
        # [1, C, 1, 1] buffer (EDSR's mean); a buffer is a constant, its layout is moot.
        for module in model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                setattr(module, name, buffer.clone(memory_format=torch.contiguous_format))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    pruner = Pruner(
        model,
        method or config.method,
        config.ratio,
        prune_steps=config.kp,
        alpha=config.alpha,
        scope=config.scope,
        skip=[] if config.prune_edges else None,
        optimizer=optimizer,
        seed=config.seed,
        telemetry=telemetry,
        pattern=config.pattern,
    )
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return TrainingState(config, model, optimizer, pruner, net)


def train_step(
    run: TrainingState, lr_batch: torch.Tensor, hr_batch: torch.Tensor, step: int
) -> float:
    """One training step (0-based ``step``): schedule, L1 loss, Adam, ``pruner.step()``.

    Returns the loss. Under ``config.bf16`` only the network's forward pass runs in
    bfloat16; the loss, the gradients Adam applies and the pruner's selection are fp32.
    """
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, step)
    device = run.device
    lr_batch, hr_batch = lr_batch.to(device), hr_batch.to(device)
    if config.channels_last:
        lr_batch = lr_batch.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
        sr = run.net(lr_batch)
    loss = nn.functional.l1_loss(sr.float(), hr_batch)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.pruner.step()
    return loss.item()


def patch_dataset(config: TrainConfig, paths: list[Path], world: int = 1) -> PatchDataset:
    """The training patches of ``config``: enough indices for every step on every rank."""
    return PatchDataset(
        paths,
        config.scale,
        hr_patch=config.patch * config.scale,
        epoch_size=config.steps * config.batch_size * world,
        seed=config.seed,
    )


def batch_loader(
    dataset: PatchDataset, config: TrainConfig, start: int, rank: int, world: int
) -> DataLoader:
    """Batches for steps start, start+1, ...: step t on rank r reads a fixed index range."""
    indices = [
        (t * world + rank) * config.batch_size + i
        for t in range(start, config.steps)
        for i in range(config.batch_size)
    ]
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=indices,
        num_workers=config.workers,
        persistent_workers=False,
    )


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _check_masks_agree(pruner: Pruner) -> None:
    """Raise if a rank's masks differ from rank 0's (they should never)."""
    for name, mask in (pruner.masks or {}).items():
        reference = mask.to(torch.uint8)
        dist.broadcast(reference, src=0)
        if not torch.equal(reference.bool(), mask):
            raise RuntimeError(f"pruning mask of {name} differs between ranks")


def train(
    config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
) -> dict:
    """Train ``config`` and write the checkpoint ``out``, its state and its telemetry.

    Returns the run's history: ``loss`` per step, ``val_steps`` and ``val_psnr``.
    """
    config.validate()
    writable(out)  # before the first step, not after the last
    rank, world = _distributed()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    run = setup_run(config, device=device, world=world)
    model, optimizer, pruner = run.model, run.optimizer, run.pruner
    saved = state_path(out)
    history, start, seconds_before = {"loss": [], "val_steps": [], "val_psnr": []}, 0, 0.0
    if resume and saved.exists():
        history, start, seconds_before = resume_state(saved, run, device)
    train_paths, val_paths, source = training_images(config)
    dataset = patch_dataset(config, train_paths, world)
    val_set = validation_crops(val_paths, config.scale)
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress or rank != 0,
        desc=f"{config.arch} x{config.scale} {config.method} r={config.ratio}",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    model.train()
    step = start
    started = time.monotonic()
    for lr_batch, hr_batch in batch_loader(dataset, config, start, rank, world):
        loss = train_step(run, lr_batch, hr_batch, step)
        step += 1
        history["loss"].append(loss)
        bar.update(1)
        validating = step % config.val_every == 0 or step == config.steps
        if validating and rank == 0:
            model.eval()
            history["val_steps"].append(step)
            history["val_psnr"].append(evaluate_arrays(model, val_set, config.scale)["psnr"])
            model.train()
        if validating or step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", val_psnr=_last(history["val_psnr"]))
        if rank == 0 and (step % config.save_every == 0 or step == config.steps):
            seconds = seconds_before + time.monotonic() - started
            save_state(saved, config, model, optimizer, pruner, history, step, seconds)
    bar.close()
    if world > 1:
        _check_masks_agree(pruner)
    if rank == 0:
        metadata = {
            "arch": PRESETS[config.arch]["arch"],
            "preset": config.arch,
            "preset_args": preset_args(config.arch),
            "scale": config.scale,
            "method": config.method,
            "ratio": config.ratio,
            "pattern": config.pattern or PER_LAYER,
            "alpha": config.alpha,
            "prune_steps": config.kp,
            "steps": config.steps,
            "seed": config.seed,
            "protocol": config.protocol,
            "schedule": config.schedule,
            "lr": config.lr,
            "betas": list(config.betas),
            "prune_edges": config.prune_edges,
            "batch_size": config.batch_size,
            "patch": config.patch,
            "precision": config.precision,
            "data": source,
            "device": _device_name(device),
            "world_size": world,
            # Training time over all sessions of a resumed run (validation included).
            "train_seconds": round(seconds_before + time.monotonic() - started, 1),
        }
        model.eval()
        save_checkpoint(out, model, metadata, pruner.pruned_layers())
        save_telemetry(telemetry_path(out), pruner, history)
    if world > 1:
        dist.barrier()
    return history


def _last(values: list[float]) -> str:
    return f"{values[-1]:.2f}" if values else "-"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({available_cpus()} cores)"
