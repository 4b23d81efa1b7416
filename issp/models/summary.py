"""Parameter, non-zero and FLOP counts of a (sparse) SR network.

FLOPs follow ``torch.utils.flop_counter``: 2 per multiply-add, counted for convolutions
and matrix products (biases, activations and element-wise ops are not counted).
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

WEIGHTED = (nn.Conv2d, nn.Linear)


def count_flops(model: nn.Module, input_size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on a 1 x 3 x H x W input: the total and per conv/linear layer.

    The per-layer dict maps each ``nn.Conv2d``/``nn.Linear`` name (as in ``named_modules``)
    to the FLOPs of its own weight product; FLOPs outside such layers (attention matmuls)
    are only in the total. The pass runs on the meta device with meta copies of the
    parameters: FLOPs depend only on shapes, and nothing is computed, so it takes well under
    a second for any model size and leaves the model untouched.
    """
    tensors = chain(model.named_parameters(), model.named_buffers())
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors}
    lr = torch.empty(1, 3, *input_size, device="meta", dtype=next(model.parameters()).dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        functional_call(model, meta, (lr,))
    counts = counter.get_flop_counts()
    # FlopCounterMode names modules by the root's class name followed by the attribute path.
    root = type(model).__name__
    per_layer = {
        name: sum(counts.get(f"{root}.{name}" if name else root, {}).values())
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED)
    }
    return counter.get_total_flops(), per_layer


def model_summary(
    model: nn.Module, input_size: tuple[int, int] = (256, 256), scale: int | None = None
) -> dict:
    """Size and cost of ``model`` for one forward pass on a 1 x 3 x H x W LR input.

    Returns ``params`` (all parameter entries), ``nonzeros`` (non-zero entries),
    ``flops_dense`` (FLOPs as ``torch.utils.flop_counter`` counts them: 2 per multiply-add)
    and ``flops_sparse``: the same, with each conv/linear layer's FLOPs multiplied by its
    weight density (non-zeros / entries), as a sparse kernel would skip the zero weights.
    FLOPs without a weight (attention matmuls) count in full. Also echoes ``input_size``
    and ``scale`` (given, else the model's ``scale`` attribute) so a report can cite them.
    """
    flops_dense, per_layer = count_flops(model, input_size)
    density = {
        name: torch.count_nonzero(module.weight).item() / module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED)
    }
    saved = sum(flops * (1 - density[name]) for name, flops in per_layer.items())
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzeros": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
        "flops_dense": flops_dense,
        "flops_sparse": round(flops_dense - saved),
        "input_size": list(input_size),
        "scale": scale if scale is not None else getattr(model, "scale", None),
    }
