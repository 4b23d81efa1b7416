"""Server memory under a long mixed load: a bounded loopback soak test.

    python -m benchmarks.soak [--minutes 20] [--workers 4] [--url URL --pid PID]

Without ``--url`` it starts ``python app.py`` on a free loopback port (the shipped zoo)
and stops it at the end. ``--workers`` clients, each its own session, loop over a fixed
mix until ``--minutes`` have passed: upload a new random image and upscale it (x2 or x4,
a random method, ratio and download format), evaluate it, fetch the results, study and
stored-dynamics views and the model options, and now and then a short live run (40
steps) or a two-alpha sweep (20 steps each). Every ``--every`` seconds it prints the
server's resident memory (RSS, from ``/proc``, so Linux only) and the requests done; at
the end the RSS at the start, the middle and the end, and the growth over the second
half, which is what a server that runs for weeks must keep near zero. It sends requests
only to a loopback address and stops by itself.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.load import ROOT, app_process, call, require_loopback, upload
from issp.machine import machine_description

TRAIN = ["edsr-tiny", 2, 0.9, "per layer", 0.95, 40, 0, 0, []]  # arch, scale, ratio, pattern...
SWEEP = ["edsr-tiny", 2, 0.9, 20, 0, 0, [0.0, 0.9]]  # ... steps per alpha, Kp, seed, alphas
METHODS = ("ISS-P", "IHT")
FORMATS = ("PNG", "WebP", "JPEG")


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB, read from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def one_round(url: str, worker: int, round_: int, folder: Path) -> list[tuple[str, str]]:
    """One pass over the mix from client ``worker``; (request, outcome) pairs."""
    rng = np.random.default_rng([worker, round_])
    side = int(rng.integers(48, 200))
    path = folder / f"soak-{worker}-{round_}.png"
    pixels = rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8)
    Image.fromarray(pixels).resize((side, side), Image.BICUBIC).save(path)
    session = f"soak-{worker}"
    done = []

    def send(name: str, data: list) -> None:
        try:
            event, _ = call(url, name, data, session, timeout=600)
        except (httpx.HTTPError, RuntimeError) as error:
            event = f"failed ({type(error).__name__})"
        done.append((name, event))

    try:
        image = {"path": upload(url, path)}
    except httpx.HTTPError as error:
        return [("upload", f"failed ({type(error).__name__})")]
    finally:
        path.unlink(missing_ok=True)
    scale = int(rng.choice([2, 4]))
    ratio = float(rng.choice([0.0, 0.5, 0.9, 0.95, 0.99]))
    method, fmt = str(rng.choice(METHODS)), str(rng.choice(FORMATS))
    send("upscale", [image, scale, ratio, method, "edsr-tiny", fmt])
    send("evaluate", [image, 2, ratio, "edsr-tiny"])
    send("results", ["ratio", "set5"])
    send("study", ["set5"])
    send("stored_settings", [None])
    send("options", [scale, "edsr-tiny", method, ratio])
    if round_ % 5 == worker % 5:
        send("train_live", TRAIN)
    if round_ % 7 == worker % 7:
        send("alpha_sweep", SWEEP)
    return done


def soak(url: str, pid: int, minutes: float, workers: int, every: float) -> dict:
    """Run the mix until ``minutes`` have passed; RSS samples ``(seconds, MiB)`` and counts."""
    deadline = time.monotonic() + 60 * minutes
    started = time.monotonic()
    samples = [(0.0, rss_mib(pid))]
    outcomes: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int, folder: Path) -> None:
        for round_ in itertools.count():
            if time.monotonic() > deadline:
                return
            for outcome in one_round(url, worker, round_, folder):
                with lock:
                    outcomes[outcome] += 1

    def sampler() -> None:
        while not stop.wait(every):
            seconds, mib = time.monotonic() - started, rss_mib(pid)
            samples.append((seconds, mib))
            with lock:
                count = sum(outcomes.values())
            print(f"{seconds / 60:5.1f} min  RSS {mib:7.1f} MiB  {count} requests", flush=True)

    with tempfile.TemporaryDirectory() as folder:
        watcher = threading.Thread(target=sampler, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda w: client(w, Path(folder)), range(workers)))
        stop.set()
    samples.append((time.monotonic() - started, rss_mib(pid)))
    return {"samples": samples, "outcomes": outcomes}


def second_half_trend(samples: list[tuple[float, float]]) -> float:
    """The growth over the second half that a least-squares line through its samples
    gives, as a share of their mean: less noisy than two single samples when the heap
    is trimmed now and then."""
    end_time = samples[-1][0]
    late = np.array([sample for sample in samples if sample[0] >= end_time / 2])
    if len(late) < 2:
        return 0.0
    slope = np.polyfit(late[:, 0], late[:, 1], 1)[0]
    return float(slope * (late[-1, 0] - late[0, 0]) / late[:, 1].mean())


def summary(result: dict) -> str:
    """Start, middle and end RSS, the second half's growth, and what was sent."""
    samples = result["samples"]
    end_time, end = samples[-1]
    middle = min(samples, key=lambda sample: abs(sample[0] - end_time / 2))[1]
    growth = (end - middle) / middle
    counts = Counter()
    for (name, outcome), n in result["outcomes"].items():
        counts[f"{name} {outcome}"] += n
    lines = [
        f"RSS: start {samples[0][1]:.1f} MiB, middle {middle:.1f}, end {end:.1f}, peak "
        f"{max(mib for _, mib in samples):.1f}; second half {growth:+.1%} end to middle, "
        f"{second_half_trend(samples):+.1%} by its fitted line",
        "requests: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running app on this machine (default: start one)")
    parser.add_argument("--pid", type=int, help="that app's process id (with --url)")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    args = parser.parse_args()
    if args.minutes <= 0 or args.workers < 1 or args.every <= 0:
        parser.error("--minutes and --every must be positive, --workers at least 1")
    if bool(args.url) != bool(args.pid):
        parser.error("give --url and --pid together")
    print(f"machine: {machine_description()}, {args.workers} clients, {args.minutes:g} minutes")
    figures = (args.minutes, args.workers, args.every)
    if args.url:
        print(summary(soak(require_loopback(args.url), args.pid, *figures)))
        return
    with (
        tempfile.TemporaryDirectory() as folder,
        app_process(ROOT / "checkpoints", Path(folder) / "app.log") as (url, process),
    ):
        print(summary(soak(url, process.pid, *figures)))


if __name__ == "__main__":
    main()
