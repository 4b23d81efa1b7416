"""SR network definitions, a table of named presets and ``build_model(name, scale)``."""

from __future__ import annotations

import copy

from torch import nn

from issp import IsspError
from issp.models.edsr import EDSR
from issp.models.summary import model_summary
from issp.models.swinir import SwinIR

__all__ = [
    "EDSR",
    "PRESETS",
    "SCALES",
    "SwinIR",
    "build_from_args",
    "build_model",
    "model_summary",
    "prefers_channels_last",
    "preset_args",
]

ARCHS: dict[str, type[nn.Module]] = {"edsr": EDSR, "swinir": SwinIR}
SCALES = (2, 3, 4)

# Preset name -> architecture and constructor arguments (all but `scale`).
# The "-tiny" presets train in minutes on two CPU cores; the others are the published models.
PRESETS: dict[str, dict] = {
    "edsr-tiny": {"arch": "edsr", "n_feats": 32, "n_blocks": 4, "res_scale": 1.0},
    "edsr-baseline": {"arch": "edsr", "n_feats": 64, "n_blocks": 16, "res_scale": 1.0},
    "swinir-tiny": {
        "arch": "swinir",
        "embed_dim": 24,
        "depths": [2, 2],
        "num_heads": [4, 4],
        "window_size": 8,
        "mlp_ratio": 2.0,
    },
    "swinir-light": {
        "arch": "swinir",
        "embed_dim": 60,
        "depths": [6, 6, 6, 6],
        "num_heads": [6, 6, 6, 6],
        "window_size": 8,
        "mlp_ratio": 2.0,
    },
}


# Which memory layout trains faster on a CPU, per architecture (benchmarks/train_step.py):
# a convolutional net gains from channels-last (edsr-tiny 1.6-1.8x), SwinIR, mostly
# attention and linear layers around two convs, does not (0.96x).
CHANNELS_LAST_FASTER = {"edsr": True, "swinir": False}


def prefers_channels_last(name: str) -> bool:
    """Whether preset ``name`` trains faster with channels-last convolutions."""
    return CHANNELS_LAST_FASTER[preset_args(name)["arch"]]


def preset_args(name: str) -> dict:
    """A copy of preset ``name``'s entry (``arch`` and constructor arguments)."""
    if name not in PRESETS:
        raise IsspError(f"unknown model {name!r}; choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def build_model(name: str, scale: int) -> nn.Module:
    """A freshly initialised model of preset ``name`` for upscaling factor ``scale``."""
    return build_from_args(preset_args(name), scale)


def build_from_args(args: dict, scale: int) -> nn.Module:
    """A model from a preset entry (``arch`` plus constructor arguments), as checkpoints
    store it, so a checkpoint loads even if the named preset changes later."""
    args = dict(args)
    arch = args.pop("arch", None)
    if arch not in ARCHS:
        raise IsspError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    if scale not in SCALES:
        raise IsspError(f"scale must be one of {', '.join(map(str, SCALES))}, got {scale}")
    return ARCHS[arch](scale=scale, **args)
