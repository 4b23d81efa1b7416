"""Does a speed setting change what training learns? A paired check on real data.

    python -m benchmarks.train_quality --data ../shared/data/train --test ../shared/data/test

For ISS-P and IHT, the same seed, steps and batches are trained in fp32 eager and with
each speed setting (``--settings``); the final Set5 PSNR of each pair is compared against
the goal (within 0.05 dB). "fp32, 2 threads" is the noise floor: the same fp32 arithmetic
summed in another order, so a setting that moves PSNR no more than it does changes
nothing that fp32 itself pins down. Runs go two at a time, one torch thread each (two for
that setting), and resume after a kill (each is an ``issp train --resume``).
"""

from __future__ import annotations

import argparse
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from issp.checkpoint import load_checkpoint
from issp.evaluate import evaluate_folder
from issp.machine import machine_description
from issp.methods import COMPARED
from issp.train import PRECISIONS, TrainConfig, train

SETTINGS = {  # name (as in run files): (torch threads, issp.train.PRECISIONS entry)
    "fp32": (1, PRECISIONS["fp32"]),
    "fp32-2threads": (2, PRECISIONS["fp32"]),
    "channels-last": (1, PRECISIONS["channels-last"]),
    "bf16+channels-last": (1, PRECISIONS["bf16"]),
}


def _train_and_score(config: TrainConfig, out: Path, test: Path, threads: int) -> float:
    torch.set_num_threads(threads)
    if not out.exists():
        train(config, out, resume=True, progress=False)
    model, _ = load_checkpoint(out)
    return evaluate_folder(model, test / "Set5", config.scale)["psnr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="training images")
    parser.add_argument("--test", type=Path, required=True, help="folder with Set5/")
    parser.add_argument("--protocol", default="two-stage")
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=0.95)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, help="default: the protocol's")
    parser.add_argument("--seeds", default="0", help="e.g. 0,1,2")
    parser.add_argument("--work", type=Path, default=Path("runs/train_quality"))
    parser.add_argument(
        "--settings",
        default="fp32-2threads,channels-last,bf16+channels-last",
        help=f"compared with fp32, from {', '.join(SETTINGS)}",
    )
    args = parser.parse_args()
    names = ["fp32", *(n for n in args.settings.split(",") if n != "fp32")]
    if unknown := set(names) - set(SETTINGS):
        parser.error(f"unknown settings {', '.join(sorted(unknown))}")
    seeds = [int(x) for x in args.seeds.split(",")]
    patch = 48 if args.scale == 2 else 24
    jobs = {}
    with ProcessPoolExecutor(2) as pool:
        for seed in seeds:
            for method in COMPARED:
                for name in names:
                    threads, speed = SETTINGS[name]
                    config = TrainConfig.of_protocol(
                        args.protocol,
                        scale=args.scale,
                        method=method,
                        ratio=args.ratio,
                        steps=args.steps,
                        patch=patch,
                        seed=seed,
                        data=args.data,
                        **({"lr": args.lr} if args.lr else {}),
                        workers=0,
                        **speed,
                    )
                    tag = f"x{args.scale}_{method}_r{args.ratio:g}_s{seed}_{args.steps}"
                    tag += f"_lr{config.lr:g}"
                    out = args.work / f"{tag}_{name}.safetensors"
                    job = pool.submit(_train_and_score, config, out, args.test, threads)
                    jobs[seed, method, name] = job
        psnr = {key: job.result() for key, job in jobs.items()}
    print(f"machine: {machine_description()}")
    print(
        f"edsr-tiny x{args.scale}, {args.protocol} protocol, lr {config.lr:g}, ratio "
        f"{args.ratio}, {args.steps} steps: Set5 PSNR (dB)"
    )
    print(f"{'seed':>4s} {'method':8s} " + " ".join(f"{n:>20s}" for n in names))
    for seed in seeds:
        for method in COMPARED:
            row = " ".join(f"{psnr[seed, method, n]:20.3f}" for n in names)
            print(f"{seed:4d} {method:8s} {row}")
    print("\nAgainst fp32 on one thread, over seeds and both methods:")
    for name in names[1:]:
        moved = [psnr[s, m, name] - psnr[s, m, "fp32"] for s in seeds for m in COMPARED]
        gap = [_gap(psnr, s, name) - _gap(psnr, s, "fp32") for s in seeds]
        print(
            f"{name:20s} |PSNR moved|: mean {statistics.mean(map(abs, moved)):.3f}, max "
            f"{max(map(abs, moved)):.3f} dB ({sum(abs(d) <= 0.05 for d in moved)} of "
            f"{len(moved)} within 0.05); ISS-P minus IHT moved by "
            + ", ".join(f"{d:+.3f}" for d in gap)
        )


def _gap(psnr: dict, seed: int, setting: str) -> float:
    """ISS-P minus IHT at one seed and setting: what the study measures."""
    issp, iht = COMPARED
    return psnr[seed, issp, setting] - psnr[seed, iht, setting]


if __name__ == "__main__":
    main()
