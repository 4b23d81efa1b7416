"""The disk bound under a flood of large uploads named like the app's own lock files.

    python -m benchmarks.disk_abuse [--uploads 130] [--mb 9.9] [--clients 130]

Starts ``python app.py`` on loopback (default disk bound, ``ISSP_DISK_MB`` unset) and
sends ``--uploads`` files of ``--mb`` MB of random bytes, each named ``.lock``, from
``--clients`` addresses taken in turn (``X-Forwarded-For``, as a proxy would set it). Prints
how many were taken and refused (and why), the largest size the server's work folder
reached after any upload, and its size a few seconds after the last one, against the
bound. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from app import DISK_MB
from benchmarks.load import ROOT, app_process
from issp.machine import machine_description


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=130)
    parser.add_argument("--mb", type=float, default=9.9)
    parser.add_argument("--clients", type=int, default=130)
    args = parser.parse_args()
    if min(args.uploads, args.clients) < 1 or not 0 < args.mb <= 10:
        parser.error("--uploads and --clients at least 1, --mb in (0, 10] (the upload limit)")
    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        env = {"GRADIO_TEMP_DIR": str(temp)}
        with app_process(ROOT / "checkpoints", temp / "app.log", env) as (url, _):
            (work,) = [p for p in (temp / "issp-app").iterdir() if p.is_dir()]
            outcomes: Counter[str] = Counter()
            largest = 0
            for n in range(args.uploads):
                body = os.urandom(int(args.mb * 2**20))
                headers = {"X-Forwarded-For": f"10.1.{n % args.clients // 256}.{n % 256}"}
                answer = httpx.post(
                    f"{url}gradio_api/upload",
                    files={"files": (".lock", body)},
                    headers=headers,
                    timeout=120,
                )
                outcome = f"{answer.status_code} {answer.text[:60]}" if answer.is_error else "taken"
                outcomes[outcome] += 1
                largest = max(largest, folder_bytes(work))
            time.sleep(12)  # one pruning round and a bit
            after = folder_bytes(work)
    print(f"{args.uploads} uploads of {args.mb:g} MB named .lock from {args.clients} clients:")
    for outcome, count in outcomes.most_common():
        print(f"  {count} x {outcome}")
    print(
        f"work folder: at most {largest / 2**20:.0f} MiB after any upload, {after / 2**20:.0f} "
        f"MiB 12 s after the last (bound {DISK_MB} MiB)"
    )


if __name__ == "__main__":
    main()
