"""Cost of one ISS-P pruner step as a share of one training step, on this machine.

Compares ``issp.pruning.Pruner.step()`` (vectorized torch selection, with telemetry) with
the same per-layer selection done by numpy argsort, and with
``torch.nn.utils.prune.l1_unstructured``.
Run from the repository root: ``python -m benchmarks.pruner_step``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from issp.machine import machine_description
from issp.models import build_model
from issp.train import TrainConfig, setup_run, train_step


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def numpy_argsort_shrink(weights: dict[str, nn.Parameter], ratio: float, alpha: float) -> None:
    """The same ISS-P selection and shrink, layer by layer through numpy argsort."""
    with torch.no_grad():
        for w in weights.values():
            flat = w.detach().cpu().numpy().ravel()
            k = math.ceil(ratio * flat.size)
            order = np.argsort(np.abs(flat), kind="stable")[:k]
            flat = flat.copy()
            flat[order] *= alpha
            w.copy_(torch.from_numpy(flat).view_as(w))


def torch_prune_l1(weights: dict[str, nn.Parameter], modules: dict[str, nn.Module], ratio: float):
    """torch.nn.utils.prune's magnitude pruning, re-applied from scratch each call."""
    for name in weights:
        module = modules[name.rsplit(".", 1)[0]]
        prune.l1_unstructured(module, "weight", amount=ratio)
        prune.remove(module, "weight")


def benchmark(preset: str, batch: int, patch: int, ratio: float, repeats: int) -> list[tuple]:
    # Kp beyond the run: every pruner step is a pruning-stage ISS-P step.
    config = TrainConfig(arch=preset, ratio=ratio, steps=10**9, batch_size=batch, patch=patch)
    run = setup_run(config)
    pruner = run.pruner
    lr_batch, hr_batch = (
        torch.rand(batch, 3, patch, patch),
        torch.rand(batch, 3, 2 * patch, 2 * patch),
    )
    train_time = seconds_per_call(lambda: train_step(run, lr_batch, hr_batch, 0), repeats)
    modules = dict(run.model.named_modules())
    rows = [("training step (fwd+bwd+Adam+pruner)", train_time)]
    rows.append(("issp Pruner.step (torch, telemetry on)", seconds_per_call(pruner.step, repeats)))
    rows.append(
        (
            "numpy argsort selection",
            seconds_per_call(
                lambda: numpy_argsort_shrink(pruner.weights, ratio, config.alpha), repeats
            ),
        )
    )
    rows.append(
        (
            "torch.nn.utils.prune.l1_unstructured",
            seconds_per_call(lambda: torch_prune_l1(pruner.weights, modules, ratio), repeats),
        )
    )
    return [(name, t, t / train_time) for name, t in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine_description()}, {torch.get_num_threads()} torch threads")
    print(f"ISS-P selection at ratio {args.ratio}; times are means over {args.repeats} calls")
    for preset, batch, patch in (("edsr-tiny", 16, 48), ("edsr-baseline", 16, 48)):
        params = sum(p.numel() for p in build_model(preset, 2).parameters())
        print(f"\n{preset} x2 ({params:,} parameters), batch {batch}, LR patch {patch}")
        print(f"{'':42s} {'ms/call':>9s} {'share of training step':>24s}")
        for name, seconds, share in benchmark(preset, batch, patch, args.ratio, args.repeats):
            print(f"{name:42s} {seconds * 1e3:9.2f} {share:23.2%}")


if __name__ == "__main__":
    main()
