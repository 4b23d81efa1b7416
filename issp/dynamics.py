"""What a run's telemetry says about its pruning stage: its mask dynamics (study v2's C4)
and its gradient flow (C5).

Mask flips are the paper's "more active sparse-structure dynamics": how often a weight
enters or leaves the selected set while the mask still moves (``mask_dynamics``).

The paper credits ISS-P with "a more regularized gradient flow" than IHT. The study v2
protocol (``analysis/claims-protocol.md``) fixed how that is measured before any run: the
coefficient of variation, over the pruning-stage steps, of the global gradient norm of
the pruned layers. A hard zeroing changes the function the net computes whenever the
selected set changes, which shows as spikes in the gradient norm; fewer and smaller spikes
give a lower CV. Two figures are reported beside it and decide nothing: how evenly the
gradient reaches the layers, and the training loss at the end of the pruning stage.

A study run also keeps a thinned copy of its telemetry (``thin_telemetry``) so that later
analyses can look at the curves without the full per-step files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from issp.files import replacing

# Per-step series of a telemetry file (``issp.run_files.save_telemetry``), one row per step.
SERIES = ("loss", "grad_norm", "flips", "sparsity", "kept_abs", "selected_abs")
THIN_EVERY = 10  # steps per row of a thinned telemetry file
# The training loss at the end of the pruning stage: its mean over this last share of it.
END_OF_PRUNING = 0.05


@dataclass(frozen=True)
class GradientFlow:
    """C5's figures for one run, over the pruning stage (steps 1 to Kp - 1)."""

    grad_cv: float  # SD / mean over steps of the global gradient norm (decides C5)
    layer_spread: float  # mean over steps of the SD across layers of log10 gradient norm
    loss_end_of_pruning: float  # mean L1 loss over the stage's last END_OF_PRUNING


def pruning_rows(prune_steps: int) -> int:
    """How many telemetry rows the pruning stage has: row t - 1 is step t, the stage is
    steps 1 to Kp - 1 (a run too short to have one is read as if Kp were 2)."""
    return max(int(prune_steps) - 1, 1)


def gradient_flow(path: str | Path, prune_steps: int) -> GradientFlow:
    """C5's figures from the telemetry file ``path`` of a run whose mask froze at Kp."""
    with np.load(path) as telemetry:
        grad, loss = telemetry["grad_norm"].astype(np.float64), telemetry["loss"]
    rows = pruning_rows(prune_steps)
    stage = grad[:rows]
    total = np.sqrt((stage**2).sum(axis=1))
    spread = np.log10(np.maximum(stage, np.finfo(np.float64).tiny)).std(axis=1)
    end = loss[rows - math.ceil(rows * END_OF_PRUNING) : rows]
    return GradientFlow(
        grad_cv=float(total.std() / total.mean()),
        layer_spread=float(spread.mean()),
        loss_end_of_pruning=float(np.mean(end)),
    )


def thin_telemetry(source: str | Path, target: str | Path, every: int = THIN_EVERY) -> None:
    """Write ``source``'s telemetry to ``target`` with one row per ``every`` steps: flips
    summed over the window (so totals are kept), the other series averaged in float16;
    the layer names and the validation history as they are."""
    with np.load(source) as telemetry:
        arrays = dict(telemetry)
    steps = len(arrays["loss"])
    thinned = {}
    for key in SERIES:
        series = arrays.pop(key)[: steps // every * every]
        windows = series.reshape(steps // every, every, *series.shape[1:])
        if key == "flips":
            thinned[key] = windows.sum(axis=1).astype(np.float32)
        else:
            thinned[key] = windows.mean(axis=1).astype(np.float16)
    with replacing(target) as tmp, open(tmp, "wb") as file:  # a file object: no suffix added
        np.savez_compressed(file, every=np.int64(every), **arrays, **thinned)


@dataclass(frozen=True)
class MaskDynamics:
    """What a run's stored telemetry says about its mask during the pruning stage: mask
    flips over the stage and over its last fifth, and mean |w| of the selected (shrunk or
    zeroed) weights over mean |w| of the kept ones on its last step, averaged over layers:
    near 0 means freezing the mask at Kp changes little, near 1 that it removes weights
    still in use."""

    flips_before_kp: float
    flips_last_fifth: float
    selected_over_kept: float


def mask_dynamics(path: Path, prune_steps: int) -> MaskDynamics:
    """The mask dynamics of the telemetry file ``path`` of a run whose mask froze at step
    ``prune_steps`` (Kp)."""
    with np.load(path) as telemetry:
        flips = telemetry["flips"].sum(axis=1)
        kept, selected = telemetry["kept_abs"], telemetry["selected_abs"]
    last = pruning_rows(prune_steps)
    late = flips[last - max(last // 5, 1) : last].sum()
    ratio = float(np.mean(selected[last - 1] / np.maximum(kept[last - 1], 1e-12)))
    return MaskDynamics(float(flips[:last].sum()), float(late), ratio)
