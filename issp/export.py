"""ONNX export, so a trained (pruned) model runs outside PyTorch.

The ONNX model is dense: pruned weights are stored as ordinary zeros, which every runtime
can load. It takes float32 RGB ``(N, 3, H, W)`` in [0, 1], with batch, height and width
all dynamic, and returns the upscaled image ``(N, 3, scale * H, scale * W)`` clamped to
[0, 1], as ``issp.upscale`` does. The checkpoint's training settings travel as ONNX
``metadata_props``. Needs the ``export`` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from issp import IsspError
from issp.files import replacing
from issp.upscale import upscale_tensor

INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
# Checkpoint metadata copied into the ONNX model, when the checkpoint has it.
METADATA_KEYS = ("preset", "scale", "method", "ratio", "protocol")
# Largest |ONNX Runtime - PyTorch| accepted on a verification image (outputs in [0, 1]).
TOLERANCE = 1e-4


class Clamped(nn.Module):
    """``model`` with its output clamped to [0, 1], the image ``issp upscale`` saves."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp(0.0, 1.0)


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a one-line IsspError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise IsspError(f"ONNX export needs {module}: pip install 'issp[export]'") from None


def onnx_metadata(meta: dict) -> dict[str, str]:
    """The entries of a checkpoint's metadata that go into the ONNX model, as strings."""
    return {key: str(meta[key]) for key in METADATA_KEYS if key in meta}


def export_onnx(model: nn.Module, out: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``model`` (eval mode, float32) to ``out`` as an ONNX model; return the path.

    Input ``lr`` and output ``sr`` have dynamic batch, height and width; ``metadata``
    becomes the model's ``metadata_props``. The file is written beside ``out`` and renamed,
    so a failed export never leaves a partial model.

    Raises:
        IsspError: onnx or onnxscript is missing, or ``out`` cannot be written.
    """
    onnx = require("onnx")
    require("onnxscript")  # torch.onnx's exporter imports it
    out = Path(out)
    # The partial file is made first, so an unwritable destination fails before the export.
    with replacing(out) as partial:
        program = _export(Clamped(model.eval()))
        proto = program.model_proto
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save_model(proto, partial)
    return out


def _export(model: nn.Module) -> torch.onnx.ONNXProgram:
    # A batch of 2 and unequal sides: torch.export specialises sizes of 1 and ties equal
    # sizes together, which would fix the batch or force square inputs.
    sample = torch.zeros(2, 3, 24, 20)
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=1),
        3: torch.export.Dim("width", min=1),
    }
    # The exporter logs and warns about optional packages (torchvision) it does not need.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model,
                (sample,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        logger.setLevel(level)


def verify_onnx(path: str | Path, model: nn.Module, lr: torch.Tensor, scale: int) -> float:
    """Max absolute difference between ONNX Runtime and PyTorch upscaling ``lr`` by ``scale``.

    ``lr`` is ``(N, 3, H, W)`` float in [0, 1]; PyTorch's result is ``issp.upscale``'s
    (untiled, clamped), the output the ONNX model is meant to reproduce.

    Raises:
        IsspError: onnxruntime is missing, or the two outputs differ in shape.
    """
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: lr.float().numpy()})
    expected = upscale_tensor(model.eval(), lr.float(), scale).numpy()
    if actual.shape != expected.shape:
        raise IsspError(f"{path}: ONNX output {actual.shape}, PyTorch output {expected.shape}")
    return float(abs(actual - expected).max())
