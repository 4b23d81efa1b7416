"""Training throughput of the zoo's protocol, in runs per CPU-hour, per speed setting.

    python -m benchmarks.train_step [--steps 20] [--compile] [--json FILE]

For edsr-tiny x2 and x4 and swinir-tiny x2 (batch 16, the zoo's patches), one training
step (``issp.train.train_step``: forward, L1 loss, backward, Adam, ISS-P's pruner step)
is timed on real patches for each setting: fp32 eager, channels-last, bfloat16 autocast,
both, and optionally ``torch.compile``. Then, for the fastest setting, one run on two
threads against two runs side by side on one thread each (separate processes), and two
models in one process as one batched network (``torch.func.vmap`` over stacked weights,
forward and backward only). A run is 3000 steps, as in the zoo; runs per CPU-hour count
both cores as two CPU-hours per hour. ``--json`` also writes the per-step seconds of every
case and setting (``analysis/zoo-precision.md`` sets its runs' lengths from them).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from issp.files import write_text
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

CASES = {  # name: (arch, scale, LR patch)
    "edsr-tiny x2": ("edsr-tiny", 2, 48),
    "edsr-tiny x4": ("edsr-tiny", 4, 24),
    "swinir-tiny x2": ("swinir-tiny", 2, 32),
}
SETTINGS = {
    "fp32 eager": {"channels_last": False},
    "channels-last": {"channels_last": True},
    "bf16 autocast": {"bf16": True, "channels_last": False},
    "bf16 + channels-last": {"bf16": True, "channels_last": True},
}
RUN_STEPS = 3000


def config_of(case: str, setting: dict, steps: int) -> TrainConfig:
    arch, scale, patch = CASES[case]
    # Kp past the timed steps: every step is a pruning-stage ISS-P step, the costlier kind.
    return TrainConfig(
        arch=arch, scale=scale, patch=patch, steps=steps, prune_steps=steps, workers=0, **setting
    )


def step_seconds(config: TrainConfig, compile_model: bool = False, warmup: int = 3) -> float:
    """Median seconds per training step on real patches (bundled photos)."""
    dataset = patch_dataset(config, training_images(config)[0])
    run = setup_run(config)
    if compile_model:
        run.net = torch.compile(run.model)
    times = []
    for step, (lr_batch, hr_batch) in enumerate(batch_loader(dataset, config, 0, 0, 1)):
        start = time.perf_counter()
        train_step(run, lr_batch, hr_batch, step)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def batched_step_seconds(config: TrainConfig, models: int, repeats: int = 8) -> float:
    """Seconds per forward+backward of ``models`` copies as one vmapped network, divided
    by ``models``: what one model's step would cost if trained this way."""
    torch.manual_seed(0)
    copies = [build_model(config.arch, config.scale) for _ in range(models)]
    params, buffers = torch.func.stack_module_state(copies)
    base = copy.deepcopy(copies[0]).to("meta")
    lr_batch = torch.rand(config.batch_size, 3, config.patch, config.patch)
    hr_batch = torch.rand(
        config.batch_size, 3, config.patch * config.scale, config.patch * config.scale
    )

    def loss(p, b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            sr = torch.func.functional_call(base, (p, b), (lr_batch,))
        return nn.functional.l1_loss(sr.float(), hr_batch)

    grads = torch.func.vmap(torch.func.grad(loss))
    for _ in range(2):
        grads(params, buffers)
    start = time.perf_counter()
    for _ in range(repeats):
        grads(params, buffers)
    return (time.perf_counter() - start) / repeats / models


def default_setting(case: str) -> str:
    """The name in SETTINGS of what ``TrainConfig`` trains ``case`` with when not told."""
    config = config_of(case, {}, 1)
    layout = {"bf16": config.bf16, "channels_last": config.channels_last}
    plain = {"bf16": False, "channels_last": False}
    return next(name for name, setting in SETTINGS.items() if plain | setting == layout)


def runs_per_cpu_hour(seconds_per_step: float, cores: int = 1) -> float:
    return 3600 / (seconds_per_step * RUN_STEPS * cores)


def side_by_side(case: str, setting: str, steps: int) -> float:
    """Seconds per step of each of two processes training at once, one thread each."""
    command = [sys.executable, "-m", "benchmarks.train_step", "--one", case, setting]
    command += ["--steps", str(steps), "--threads", "1"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return statistics.mean(float(w.communicate()[0].split()[-1]) for w in workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--cases", default=",".join(CASES), help=f"from {', '.join(CASES)}")
    parser.add_argument(
        "--settings-only", action="store_true", help="skip the two-core comparisons"
    )
    parser.add_argument("--json", type=Path, help="also write the seconds per step here")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        case, setting = args.one
        print(step_seconds(config_of(case, SETTINGS[setting], args.steps + 3)))
        return
    load = os.getloadavg()
    print(f"machine: {machine_description()}, load average {load}")
    print(f"median of {args.steps} steps, batch 16, ISS-P pruning stage; a run = {RUN_STEPS} steps")
    best, timings = {}, {}
    for case in args.cases.split(","):
        print(f"\n{case}, {args.threads} thread(s)")
        print(f"{'setting':34s} {'ms/step':>9s} {'runs/CPU-hour':>14s} {'speed-up':>9s}")
        rows = {}
        for name, setting in SETTINGS.items():
            rows[name] = step_seconds(config_of(case, setting, args.steps + 3))
        if args.compile:
            fastest = SETTINGS[min(rows, key=rows.get)]
            config = config_of(case, fastest, args.steps + 10)
            rows["torch.compile (+ fastest)"] = step_seconds(config, compile_model=True, warmup=10)
        default = default_setting(case)
        for name, seconds in rows.items():
            speedup = rows["fp32 eager"] / seconds
            shown = f"{name} (default)" if name == default else name
            print(
                f"{shown:34s} {seconds * 1e3:9.1f} {runs_per_cpu_hour(seconds):14.2f} "
                f"{speedup:8.2f}x"
            )
        best[case] = min((n for n in rows if n in SETTINGS), key=rows.get)
        timings[case] = rows
    if args.json:
        record = {
            "command": "python -m benchmarks.train_step " + " ".join(sys.argv[1:]),
            "machine": machine_description(),
            "threads": args.threads,
            "steps": args.steps,
            "load_average_at_start": list(load),
            "seconds_per_step": timings,
        }
        write_text(args.json, json.dumps(record, indent=1) + "\n")
    if args.settings_only:
        return
    print("\nTwo cores, the fastest eager setting: runs per hour of the whole machine")
    for case, name in best.items():
        torch.set_num_threads(2)
        two_threads = step_seconds(config_of(case, SETTINGS[name], args.steps + 3))
        torch.set_num_threads(args.threads)
        each = side_by_side(case, name, args.steps)
        print(
            f"{case} ({name}): one run on 2 threads {3600 / (two_threads * RUN_STEPS):.2f}/h, "
            f"two runs on 1 thread each {2 * 3600 / (each * RUN_STEPS):.2f}/h; "
            + vmapped(config_of(case, SETTINGS[name], args.steps))
        )


def vmapped(config: TrainConfig) -> str:
    """Two models as one vmapped network against one, per model, or why it cannot run."""
    try:
        batched, single = batched_step_seconds(config, 2), batched_step_seconds(config, 1)
    except RuntimeError as err:  # swinir's attention under vmap + bf16 autocast
        return f"2 models vmapped: fails ({str(err).splitlines()[0]})"
    per_model = f"{batched * 1e3:.0f} ms vs 1 model {single * 1e3:.0f} ms"
    return f"fwd+bwd per model, 2 models vmapped {per_model}"


if __name__ == "__main__":
    main()
