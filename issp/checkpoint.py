"""Checkpoint I/O: safetensors only, sparse weights stored compactly.

A pruned weight is stored as its non-zero values plus a bitmask (``<name>::values``,
``<name>::bits``), so a checkpoint at ratio r takes about (1 - r) of the dense size plus
n/8 bytes per layer. Loading restores dense tensors. The training configuration travels
in the safetensors metadata (string values; structured ones as JSON).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import issp
from issp import IsspError
from issp.files import replacing
from issp.models import PRESETS, build_from_args, build_model, model_summary
from issp.selection import PER_LAYER

FORMAT = "issp-sparse-v1"
# Keys whose metadata values are JSON rather than plain strings.
JSON_KEYS = ("preset_args", "pruned_layers", "shapes", "extra", "betas")


def save_checkpoint(
    path: str | Path, model: nn.Module, metadata: dict, pruned_layers: list[str]
) -> None:
    """Write ``model``'s weights and ``metadata`` to ``path`` atomically.

    ``metadata`` must hold at least ``preset`` and ``scale``; ``pruned_layers`` names the
    weights stored compactly (and listed in the metadata for ``info``).
    """
    missing = [key for key in ("preset", "scale") if key not in metadata]
    if missing:
        raise IsspError(f"checkpoint metadata needs {' and '.join(missing)}: nothing written")
    state = model.state_dict()
    strays = [name for name in pruned_layers if name not in state]
    if strays:
        raise IsspError(f"pruned layer {strays[0]} is not in the model's state_dict")
    tensors, shapes = {}, {}
    for name, value in state.items():
        value = value.detach().cpu().contiguous()
        if name in pruned_layers:
            flat = value.flatten()
            keep = flat != 0
            tensors[f"{name}::values"] = flat[keep].clone()
            tensors[f"{name}::bits"] = torch.from_numpy(np.packbits(keep.numpy()))
            shapes[name] = list(value.shape)
        else:
            tensors[name] = value
    meta = {"format": FORMAT, "version": issp.__version__, **metadata}
    meta["pruned_layers"] = list(pruned_layers)
    meta["shapes"] = shapes
    strings = {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in meta.items()}
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata=strings)


def read_metadata(path: str | Path) -> dict:
    """The metadata of a checkpoint, JSON fields decoded; IsspError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise IsspError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise IsspError(f"{path} is not a safetensors checkpoint ({error})") from None
    if raw.get("format") != FORMAT:
        raise IsspError(f"{path} is a safetensors file but not an issp checkpoint")
    try:
        meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}
    except ValueError as error:
        raise IsspError(f"{path}: corrupt metadata ({error})") from None
    _check_metadata(path, meta)
    return meta


def _check_metadata(path: Path, meta: dict) -> None:
    """IsspError unless the fields every reader relies on are there and well formed."""
    missing = [key for key in ("preset", "scale", "shapes", "pruned_layers") if key not in meta]
    if missing:
        raise IsspError(f"{path}: metadata lacks {', '.join(missing)}")
    shapes, layers = meta["shapes"], meta["pruned_layers"]
    if not (
        isinstance(shapes, dict)
        and all(
            isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
            for shape in shapes.values()
        )
        and isinstance(layers, list)
        and all(isinstance(name, str) for name in layers)
    ):
        raise IsspError(f"{path}: corrupt metadata (shapes or pruned_layers)")
    _number(path, meta, "scale", int)


def _number(path: Path, meta: dict, key: str, kind: type = float) -> float:
    """``meta[key]`` as ``kind``; IsspError naming the field if it is missing or not one."""
    try:
        return kind(meta[key])
    except (KeyError, ValueError) as error:
        raise IsspError(
            f"{path}: metadata field {key} is missing or not a number ({error})"
        ) from None


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Dense state dict and metadata of a checkpoint."""
    meta = read_metadata(path)
    state = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for name in keys:
            if "::" not in name:
                state[name] = f.get_tensor(name)
        for name, shape in meta["shapes"].items():
            if f"{name}::values" not in keys or f"{name}::bits" not in keys:
                raise IsspError(f"{path}: sparse weight {name} is incomplete")
            numel = int(np.prod(shape))
            bits = np.unpackbits(f.get_tensor(f"{name}::bits").numpy(), count=numel)
            values = f.get_tensor(f"{name}::values")
            keep = torch.from_numpy(bits.astype(bool))
            if int(keep.sum()) != values.numel():
                raise IsspError(f"{path}: sparse weight {name} has a corrupt mask")
            dense = torch.zeros(numel, dtype=values.dtype)
            dense[keep] = values
            state[name] = dense.view(shape)
    return state, meta


def load_checkpoint(
    path: str | Path,
    scale: int | None = None,
    arch: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """Build the model a checkpoint describes and load its weights.

    ``scale`` and ``arch`` (a preset name), when given, must match the checkpoint's; any
    mismatch between the stored tensors and the model gets a one-line IsspError.
    """
    state, meta = load_state(path)
    preset, stored_scale = meta["preset"], int(meta["scale"])
    if arch is not None and arch != preset:
        raise IsspError(f"{path} holds a {preset} model, not {arch}")
    if scale is not None and scale != stored_scale:
        raise IsspError(f"{path} is a x{stored_scale} model, but x{scale} was asked for")
    stored_args = meta.get("preset_args")
    if not stored_args and preset not in PRESETS:
        raise IsspError(
            f"{path} holds a {preset!r} model, not one of issp's presets: load its weights "
            "into your own model with issp.checkpoint.load_state"
        )
    try:
        model = (
            build_from_args(stored_args, stored_scale)
            if stored_args
            else build_model(preset, stored_scale)
        )
    except TypeError as error:
        raise IsspError(f"{path}: its model arguments do not fit this version ({error})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise IsspError(
            f"{path} does not match {preset} x{stored_scale}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise IsspError(
                f"{path}: {name} has shape {tuple(value.shape)}, "
                f"{preset} x{stored_scale} expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_info(path: str | Path, size: int = 256) -> dict:
    """Parameters, non-zeros, per-layer sparsity and FLOPs of a checkpoint."""
    model, meta = load_checkpoint(path)
    params = dict(model.named_parameters())
    layers = [
        {
            "name": name,
            "numel": params[name].numel(),
            "nonzeros": int(torch.count_nonzero(params[name])),
        }
        for name in meta["pruned_layers"]
    ]
    summary = model_summary(model, (size, size))
    return {
        "checkpoint": str(path),
        "preset": meta["preset"],
        "scale": int(meta["scale"]),
        "method": meta.get("method", "?"),
        "ratio": _number(Path(path), meta, "ratio"),
        # Checkpoints from before N:M selection chose per layer.
        "pattern": meta.get("pattern", PER_LAYER),
        "alpha": _number(Path(path), meta, "alpha"),
        "input_size": [size, size],
        **summary,
        "layers": layers,
    }
