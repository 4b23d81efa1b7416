"""Running a plan: train and score each run without a result yet, several side by side,
and read back the result files the runs leave.

Each run claims a file lock, so several ``study run`` processes split one plan, and a
killed run resumes from its training state. A finished run leaves ``<name>.json`` with its
scores beside a copy of its checkpoint; the reports read only those files.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from issp import IsspError
from issp.catalogue import TEST_SETS, score_key
from issp.checkpoint import load_checkpoint
from issp.dynamics import gradient_flow, mask_dynamics, thin_telemetry
from issp.evaluate import evaluate_folder
from issp.files import copy_file, write_text
from issp.machine import available_cpus, machine_description
from issp.run_files import state_path, telemetry_path
from issp.study.plan import RunFolders, StudyRun
from issp.train import train


def test_folders(test: Path | None, extra: Sequence[Path] = ()) -> dict[str, Path]:
    """Evaluation folders by result key: Set5 and Set14 under ``test``, then ``extra``."""
    folders = {score_key(name): test / name for name in TEST_SETS} if test is not None else {}
    return folders | {score_key(Path(folder).name): Path(folder) for folder in extra}


def execute(
    runs: Sequence[StudyRun],
    folders: RunFolders,
    tests: dict[str, Path],
    jobs: int = 2,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> list[dict]:
    """Train and score every run without a result yet, ``jobs`` at a time with ``threads``
    torch threads each (default: the usable cores split between the jobs); return all
    results (those finished by other processes included). A run that fails is logged as it
    fails and the others go on; IsspError at the end names every failed run."""
    folders.work.mkdir(parents=True, exist_ok=True)
    folders.results.mkdir(parents=True, exist_ok=True)
    pending = [run for run in runs if not run.result_path(folders.results).exists()]
    log(f"[{time.strftime('%H:%M:%S')}] {len(runs) - len(pending)} of {len(runs)} runs done")
    threads = threads or max(1, available_cpus() // jobs)
    with ProcessPoolExecutor(jobs) as pool:
        futures = {pool.submit(_execute_one, run, folders, tests, threads): run for run in pending}
        # As they finish, not in plan order: a short x4 run is logged while an x2 one trains.
        failed = []
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                message = future.result()
            except Exception as err:  # said now, raised below: the other runs go on
                failed.append(futures[future].name)
                message = f"FAILED: {type(err).__name__}: {err}"
            count = f"{len(runs) - len(pending) + done} of {len(runs)}"
            log(f"[{time.strftime('%H:%M:%S')}] ({count}) {futures[future].name}: {message}")
    if failed:
        raise IsspError(f"{len(failed)} of {len(pending)} runs failed: {', '.join(failed)}")
    return load_results(runs, folders.results)


def _execute_one(run: StudyRun, folders: RunFolders, tests: dict[str, Path], threads: int) -> str:
    torch.set_num_threads(threads)
    out, results = run.checkpoint_path(folders.work), folders.results
    try:
        with FileLock(folders.work / f"{run.name}.lock", timeout=0):
            if run.result_path(results).exists():
                return "done by another process"
            history = train(run.config, out, resume=True, progress=False)
            model, meta = load_checkpoint(out)
            result = {
                "name": run.name,
                "config": dataclasses.asdict(run.config),
                "val_psnr": history["val_psnr"][-1],
                "train_seconds": float(meta["train_seconds"]),
                "device": meta["device"],
                "machine": machine_description(),  # the CPU: bf16 speed and sums depend on it
            }
            for key, folder in tests.items():
                scores = evaluate_folder(model, folder, run.config.scale)
                result[key] = scores  # with per-image rows, for re-analysis
            telemetry = telemetry_path(out)
            if run.config.method != "dense" and telemetry.is_file():
                kp = run.config.kp
                result["dynamics"] = dataclasses.asdict(mask_dynamics(telemetry, kp))
                result["gradient_flow"] = dataclasses.asdict(gradient_flow(telemetry, kp))
                # The curves, thinned, for analyses the summaries above do not foresee.
                thin_telemetry(telemetry, run.telemetry_path(results))
            # The checkpoint is kept beside its scores (compact sparse storage, about 200
            # KB), so a later analysis can re-score it on any images (``study rescore``).
            copy_file(out, run.checkpoint_path(results))
            write_text(run.result_path(results), json.dumps(result, indent=1) + "\n")
            state_path(out).unlink(missing_ok=True)
            scores = ", ".join(f"{k} {result[k]['psnr']:.3f}" for k in tests)
            return f"val {result['val_psnr']:.3f} dB" + (f", {scores}" if scores else "")
    except Timeout:
        return "skipped: another process is training it"


def claimable(run: StudyRun, folders: RunFolders) -> bool:
    """Whether ``run`` has no result and no process holds its lock: a look, not a claim
    (``execute`` claims it, and skips it if another process came first). The look holds
    the lock for an instant, so another process trying the run then skips it; nothing is
    lost, since this process goes on to claim it or the next plan lists it again."""
    if run.result_path(folders.results).exists():
        return False
    try:
        with FileLock(folders.work / f"{run.name}.lock", timeout=0):
            return True
    except Timeout:
        return False


def load_results(runs: Sequence[StudyRun], results: Path) -> list[dict]:
    """The results of ``runs`` that have finished, in plan order."""
    paths = [run.result_path(results) for run in runs]
    return [json.loads(path.read_text()) for path in paths if path.exists()]
