"""What recording pruning telemetry costs, and how fast the live comparison runs.

    python -m benchmarks.telemetry_overhead [--steps 40] [--lockstep-steps 200]

1. edsr-tiny training steps (the zoo's batch 16, LR patch 48, ISS-P in its pruning stage)
   with the Pruner's telemetry recorded and not. The two runs start from the same weights,
   see the same batches and alternate step by step, so load from other processes hits
   both alike; the medians are compared. Budget: recording adds at most 10%.
2. The default live comparison (``LockstepConfig()``: ISS-P and IHT in lockstep, one
   torch thread as ``issp analyze`` uses), in steps per second after setup, validation
   included. Budget: at least 10 steps per second on two cores.

Timings on a shared machine are noisy: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from analysis.lockstep import LockstepConfig, run_lockstep
from issp.machine import machine_description
from issp.models import build_model
from issp.train import (
    TrainConfig,
    batch_loader,
    patch_dataset,
    setup_run,
    train_step,
    training_images,
)


def training_step_times(config: TrainConfig, warmup: int = 5) -> dict[str, float]:
    """Median seconds per training step (``on``, ``off``) and per ``pruner.step()`` alone
    (``pruner_on``, ``pruner_off``) with telemetry recorded and not.

    The pruner's share is timed on its own too (the same step again on a copy of the run's
    weights): a short interval is rarely interrupted by other processes, so the difference
    of its medians is the steadier estimate of what recording costs.
    """
    train_paths, _, _ = training_images(config)
    dataset = patch_dataset(config, train_paths)
    torch.manual_seed(config.seed)
    initial = build_model(config.arch, config.scale)
    runs = {
        name: setup_run(config, copy.deepcopy(initial), telemetry=telemetry)
        for name, telemetry in (("on", True), ("off", False))
    }
    probes = {
        name: setup_run(config, copy.deepcopy(initial), telemetry=telemetry).pruner
        for name, telemetry in (("on", True), ("off", False))
    }
    times: dict[str, list[float]] = {"on": [], "off": [], "pruner_on": [], "pruner_off": []}
    for step, (lr_batch, hr_batch) in enumerate(batch_loader(dataset, config, 0, 0, 1)):
        # Alternate which run goes first, so neither always meets a warmer cache.
        order = ("on", "off") if step % 2 else ("off", "on")
        for name in order:
            start = time.perf_counter()
            train_step(runs[name], lr_batch, hr_batch, step)
            middle = time.perf_counter()
            probes[name].step()
            end = time.perf_counter()
            if step >= warmup:
                times[name].append(middle - start)
                times[f"pruner_{name}"].append(end - middle)
    return {name: statistics.median(values) for name, values in times.items()}


def lockstep_speed(steps: int) -> tuple[float, float]:
    """Steps per second of the default live comparison after its first snapshot: by the
    wall clock, and by this process's CPU time (what an otherwise idle core would give)."""
    config = LockstepConfig(steps=steps)
    first = None
    for snapshot in run_lockstep(config, every=5):
        if first is None:
            first = (time.perf_counter(), time.process_time(), snapshot.step)
    wall, cpu, step = first
    done = snapshot.step - step
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per setting")
    parser.add_argument("--lockstep-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, help="torch threads for training steps")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine_description()}, load average {os.getloadavg()}")

    defaults = LockstepConfig()
    # The zoo's batches, and the live comparison's smaller ones where recording weighs more.
    for batch_size, patch in ((16, 48), (defaults.batch_size, defaults.patch)):
        config = TrainConfig(
            steps=args.steps, prune_steps=args.steps + 1, batch_size=batch_size, patch=patch
        )
        t = {key: value * 1e3 for key, value in training_step_times(config).items()}
        recording = t["pruner_on"] - t["pruner_off"]
        print(
            f"edsr-tiny training step (batch {batch_size}, patch {patch}, "
            f"{torch.get_num_threads()} threads): telemetry on {t['on']:.1f} ms, "
            f"off {t['off']:.1f} ms ({t['on'] / t['off'] - 1:+.1%}); pruner.step() "
            f"{t['pruner_on']:.2f} vs {t['pruner_off']:.2f} ms, so recording costs "
            f"{recording:.2f} ms = {recording / t['off']:+.1%} of a step (budget 10%)"
        )

    wall, cpu = lockstep_speed(args.lockstep_steps)
    print(
        f"live comparison ({' vs '.join(defaults.methods)}, batch {defaults.batch_size}, "
        f"patch {defaults.patch}, {defaults.threads} thread): {wall:.1f} steps/s by the clock, "
        f"{cpu:.1f} per CPU second (budget 10)"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
