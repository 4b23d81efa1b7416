"""What a training run leaves on disk beside its checkpoint: the state it resumes from
(``<out>.state.pt``) and its per-step telemetry (``<out>.telemetry.npz``).

A state holds the model, Adam's moments, the pruner's masks and telemetry, the history and
the step, and the config it was made with: a run resumes only with settings that compute
the same thing (another device or worker count is fine, another ratio is not).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from issp import IsspError
from issp.files import replacing
from issp.pruning import Pruner

if TYPE_CHECKING:  # issp.train imports this module
    from issp.train import TrainingState


def state_path(out: str | Path) -> Path:
    """Where a run writing ``out`` keeps the state it resumes from."""
    return Path(f"{out}.state.pt")


def telemetry_path(out: str | Path) -> Path:
    return Path(f"{out}.telemetry.npz")


def resume_state(saved: Path, run: TrainingState, device: torch.device) -> tuple[dict, int, float]:
    """Load the state ``saved`` into ``run``; returns its history, step and seconds so far.
    IsspError if it was made with settings that change what the run computes, or cannot be
    read or loaded (a damaged file: the message says to remove it)."""
    try:
        state = torch.load(saved, map_location=device, weights_only=True)
        settings = state["config"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as error:
        raise IsspError(
            f"{saved} is not a readable training state ({_gist(error)}); remove it"
        ) from None
    if _result_settings(settings, run.config) != _result_settings(
        dataclasses.asdict(run.config), run.config
    ):
        raise IsspError(f"{saved} was made with other settings; remove it or drop --resume")
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.pruner.load_state_dict(state["pruner"])
        history = {k: list(v) for k, v in state["history"].items()}
        return history, int(state["step"]), float(state.get("seconds", 0.0))
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise IsspError(
            f"{saved} is a damaged training state ({_gist(error)}); remove it"
        ) from None


def _gist(error: Exception) -> str:
    """The first line of ``error``: torch's loading errors run to a page."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _result_settings(settings: dict, config: object) -> dict:
    """The settings that change what a run computes: a run may resume on another device or
    with another worker count, not with another ratio or schedule. A setting added since a
    state was saved counts as its default, which is what that state trained with."""
    fields = dataclasses.fields(config)
    added = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    merged = added | settings
    return {k: v for k, v in merged.items() if k not in ("device", "workers", "save_every")}


def save_state(
    path: Path,
    config: object,
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
    with replacing(path) as tmp:
        torch.save(state, tmp)


def save_telemetry(path: str | Path, pruner: Pruner, history: dict) -> None:
    """Per-step pruner telemetry and the loss/validation history as one ``.npz``."""
    arrays = {key: value.astype(np.float32) for key, value in pruner.telemetry().items()}
    with replacing(path) as tmp, open(tmp, "wb") as file:  # a file object: no suffix added
        np.savez_compressed(
            file,
            layers=np.array(pruner.names),
            loss=np.asarray(history["loss"], np.float32),
            val_steps=np.asarray(history["val_steps"], np.int64),
            val_psnr=np.asarray(history["val_psnr"], np.float32),
            **arrays,
        )
