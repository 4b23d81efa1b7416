"""Which of a model's weights a pruner acts on, and how many of a layer's it prunes.

Researchers bring their own networks, so the rules are written for any ``nn.Module``, not
only the bundled presets: a weight the pruner cannot hold a mask on (one a parametrization
such as weight norm computes on every forward pass, or a lazy module's, not yet made) is
refused with the layer's name rather than left dense without a word.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

from torch import nn

from issp import IsspError

# The layers whose ``weight`` is pruned; transposed convs are the upsamplers of FSRCNN-like
# nets. ``nn.MultiheadAttention`` keeps its packed ``in_proj_weight`` outside any of them.
PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def pruned_count(n: int, fraction: float) -> int:
    """How many of a layer's ``n`` weights a ``fraction`` prunes: ``ceil(fraction * n)``,
    but never all ``n``; a layer with no weight left would cut the network off its input
    (at ratio 0.99 that is any layer of 100 weights or fewer)."""
    return max(0, min(math.ceil(fraction * n), n - 1))


def prunable_weights(
    model: nn.Module, skip: Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """The weights a pruner acts on, keyed by parameter name.

    Every trainable ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.Linear`` weight, minus
    modules whose name matches one of the fnmatch patterns in ``skip``; frozen weights
    (``requires_grad=False``) are left alone, and a weight that several layers share counts
    once, under its first name. ``skip=None`` skips the first and the last conv of the
    network (in registration order), which the SR pruning literature keeps dense.

    IsspError for a ``skip`` that is a bare string or holds a pattern no layer matches, and
    for a weight no mask can hold (see the module docstring).
    """
    if isinstance(skip, str):
        raise IsspError(f"skip takes a list of layer-name patterns, not the string {skip!r}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]
    if skip is None:
        convs = [name for name, m in layers if not isinstance(m, nn.Linear)]
        skip = [convs[0], convs[-1]] if convs else []
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in layers):
            hint = _hint(model, pattern)
            raise IsspError(f"skip pattern {pattern!r} matches no conv or linear layer{hint}")
    weights: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in layers:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in skip):
            continue
        weight = _maskable(name, module)
        if weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            weights[f"{name}.weight" if name else "weight"] = weight
    return weights


def _hint(model: nn.Module, pattern: str) -> str:
    """Where ``pattern`` names a block rather than its layers, how to name the layers."""
    if any(fnmatch.fnmatchcase(name, pattern) for name, _ in model.named_modules()):
        return f" (patterns match whole layer names: {pattern + '.*'!r} for the layers inside)"
    return ""


def _maskable(name: str, module: nn.Module) -> nn.Parameter | None:
    """``module.weight`` if a mask written into it holds, ``None`` if it is frozen, and
    IsspError naming the layer if no mask could hold."""
    weight = module.weight
    if isinstance(weight, nn.parameter.UninitializedParameter):
        raise IsspError(
            f"layer {name or 'model'} is a lazy module not made yet: run one forward pass "
            "before building the pruner"
        )
    if not weight.requires_grad:
        return None
    if not isinstance(weight, nn.Parameter):
        raise IsspError(
            f"layer {name or 'model'}'s weight is recomputed on every forward pass (weight "
            "norm or another parametrization), so no mask on it would hold: remove the "
            "parametrization before pruning, or skip the layer"
        )
    return weight
