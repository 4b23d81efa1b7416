"""The training loop: L1 loss, Adam with cosine decay, a pruner stepped after the optimizer.

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

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from issp import IsspError
from issp.checkpoint import save_checkpoint
from issp.data import PatchDataset, default_image_paths, find_images, split_train_val
from issp.evaluate import evaluate_arrays, validation_crops
from issp.models import PRESETS, build_model, preset_args
from issp.pruning import Pruner


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults suit ``edsr-tiny`` on a CPU."""

    arch: str = "edsr-tiny"
    scale: int = 2
    method: str = "issp"
    ratio: float = 0.9
    alpha: float = 0.99
    steps: int = 2000
    prune_steps: int | None = None  # Kp; None means 60% of the steps
    batch_size: int = 16
    patch: int = 48  # LR patch side; HR patches are scale times larger
    lr: float = 1e-3
    min_lr: float = 1e-5
    scope: str = "local"
    data: str | None = None  # None: photos shipped in installed packages
    val: str | None = None  # None: a split carved out of the training images
    val_every: int = 200
    save_every: int = 200
    seed: int = 0
    device: str = "cpu"
    workers: int = 1

    @property
    def kp(self) -> int:
        return self.prune_steps if self.prune_steps is not None else max(1, int(0.6 * self.steps))

    def validate(self) -> None:
        """Raise IsspError for arguments no run could use."""
        if self.arch not in PRESETS:
            raise IsspError(f"unknown architecture {self.arch!r}; choose from {', '.join(PRESETS)}")
        if self.scale not in (2, 3, 4):
            raise IsspError(f"scale must be 2, 3 or 4, got {self.scale}")
        if not 0 <= self.ratio < 1:
            raise IsspError(f"pruning ratio must be in [0, 1), got {self.ratio}")
        if not 0 < self.alpha < 1:
            raise IsspError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.steps < 1 or self.kp < 1 or self.kp > self.steps:
            raise IsspError(f"need 1 <= prune-steps <= steps, got {self.kp} and {self.steps}")
        if self.batch_size < 1 or self.patch < 8:
            raise IsspError("batch size must be >= 1 and patch >= 8")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise IsspError("--device cuda was asked for, but no CUDA device is available")


def training_images(config: TrainConfig) -> tuple[list[Path], list[Path], str]:
    """Training paths, validation paths and a description of the data for the metadata."""
    paths = find_images(config.data) if config.data else default_image_paths()
    source = str(config.data) if config.data else "default (photos in installed packages)"
    if config.val:
        return paths, find_images(config.val), source
    train, val = split_train_val(paths, val_fraction=0.1, seed=config.seed)
    return train, val, source


def make_pruner(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    method: str | None = None,
    telemetry: bool = True,
) -> Pruner:
    """The pruner of ``config`` (or of another ``method`` with the same settings)."""
    return Pruner(
        model,
        method or config.method,
        config.ratio,
        prune_steps=config.kp,
        alpha=config.alpha,
        scope=config.scope,
        optimizer=optimizer,
        seed=config.seed,
        telemetry=telemetry,
    )


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


def cosine_lr(config: TrainConfig, step: int) -> float:
    progress = min(step / config.steps, 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def state_path(out: str | Path) -> Path:
    return Path(f"{out}.state.pt")


def telemetry_path(out: str | Path) -> Path:
    return Path(f"{out}.telemetry.npz")


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
    rank, world = _distributed()
    device = torch.device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.manual_seed(config.seed)
    model = build_model(config.arch, config.scale).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    pruner = make_pruner(config, model, optimizer)
    history = {"loss": [], "val_steps": [], "val_psnr": []}
    start, seconds_before = 0, 0.0
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    saved = state_path(out)
    if resume and saved.exists():
        state = torch.load(saved, map_location=device, weights_only=True)
        if _result_settings(state["config"]) != _result_settings(dataclasses.asdict(config)):
            raise IsspError(f"{saved} was made with other settings; remove it or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        pruner.load_state_dict(state["pruner"])
        history = {k: list(v) for k, v in state["history"].items()}
        start = state["step"]
        seconds_before = state.get("seconds", 0.0)
    train_paths, val_paths, source = training_images(config)
    dataset = patch_dataset(config, train_paths, world)
    val_set = validation_crops(val_paths, config.scale)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = nn.L1Loss()
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
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config, step)
        loss = loss_fn(net(lr_batch.to(device)), hr_batch.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pruner.step()
        step += 1
        history["loss"].append(loss.item())
        bar.update(1)
        if step % config.val_every == 0 or step == config.steps:
            if rank == 0:
                model.eval()
                history["val_steps"].append(step)
                history["val_psnr"].append(evaluate_arrays(model, val_set, config.scale)["psnr"])
                model.train()
            bar.set_postfix(loss=f"{loss.item():.4f}", val_psnr=_last(history["val_psnr"]))
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", val_psnr=_last(history["val_psnr"]))
        if rank == 0 and (step % config.save_every == 0 or step == config.steps):
            seconds = seconds_before + time.monotonic() - started
            _save_state(saved, config, model, optimizer, pruner, history, step, seconds)
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
            "alpha": config.alpha,
            "prune_steps": config.kp,
            "steps": config.steps,
            "seed": config.seed,
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


def _result_settings(settings: dict) -> dict:
    """The settings that change what a run computes: a run may resume on another device or
    with another worker count, not with another ratio or schedule."""
    return {k: v for k, v in settings.items() if k not in ("device", "workers", "save_every")}


def _last(values: list[float]) -> str:
    return f"{values[-1]:.2f}" if values else "-"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def _save_state(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pruner: Pruner,
    history: dict,
    step: int,
    seconds: float,
) -> None:
    state = {
        "config": dataclasses.asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "pruner": pruner.state_dict(),
        "history": history,
        "step": step,
        "seconds": seconds,
    }
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_telemetry(path: str | Path, pruner: Pruner, history: dict) -> None:
    """Per-step pruner telemetry and the loss/validation history as one ``.npz``."""
    arrays = {key: value.astype(np.float32) for key, value in pruner.telemetry().items()}
    np.savez_compressed(
        path,
        layers=np.array(pruner.names),
        loss=np.asarray(history["loss"], np.float32),
        val_steps=np.asarray(history["val_steps"], np.int64),
        val_psnr=np.asarray(history["val_psnr"], np.float32),
        **arrays,
    )
