"""The checkpoint zoo: one protocol per (arch, scale), a manifest, and the results table.

``python -m issp zoo build --data DIR --test DIR`` trains every missing checkpoint (and
resumes a half-trained one from ``runs/zoo/``), evaluates it on Set5/Set14 and records it
in ``checkpoints/manifest.json``. ``python -m issp zoo eval --data DIR`` recomputes the
table from the checkpoints and writes it to ``analysis/results.md`` and the README.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from torch import nn

from issp import IsspError
from issp.checkpoint import checkpoint_info, load_checkpoint, sha256
from issp.evaluate import evaluate_arrays, evaluate_folder, validation_crops
from issp.machine import machine_description
from issp.models import model_summary
from issp.train import TrainConfig, telemetry_path, train, training_images

ROOT = Path(__file__).resolve().parents[1]
ZOO_DIR = ROOT / "checkpoints"
MANIFEST = ZOO_DIR / "manifest.json"
TELEMETRY_DIR = ROOT / "analysis" / "telemetry"
WORK_DIR = ROOT / "runs" / "zoo"
RESULTS = ROOT / "analysis" / "results.md"
README = ROOT / "README.md"
TEST_SETS = ("Set5", "Set14")
SCORE_KEYS = tuple(name.lower() for name in TEST_SETS)
FLOPS_INPUT = (256, 256)
RATIOS = (0.5, 0.75, 0.9, 0.95, 0.99)
# Chosen by the validation sweep in analysis/alpha_sweep.md (never on Set5/Set14).
ALPHA = 0.9

# One protocol per (arch, scale): every method gets the same seed, data order, steps,
# Kp, optimizer and schedule; only the pruning rule differs.
PROTOCOLS: dict[tuple[str, int], dict] = {
    ("edsr-tiny", 2): {"steps": 3000, "prune_steps": 1800, "batch_size": 16, "patch": 48},
    ("edsr-tiny", 4): {"steps": 3000, "prune_steps": 1800, "batch_size": 16, "patch": 24},
    # SwinIR costs about 2.5x EDSR per pixel on CPU: fewer steps on smaller patches keep the
    # whole zoo within about 8 CPU-hours on a 2-core machine.
    ("swinir-tiny", 2): {"steps": 2000, "prune_steps": 1200, "batch_size": 16, "patch": 32},
}
PLAN_RATIOS = {
    ("edsr-tiny", 2): RATIOS,
    ("edsr-tiny", 4): RATIOS,
    ("swinir-tiny", 2): (0.9, 0.99),
}


@dataclass(frozen=True)
class ZooEntry:
    """One checkpoint of the zoo."""

    arch: str
    scale: int
    method: str
    ratio: float

    @property
    def name(self) -> str:
        if self.method == "dense":
            return f"{self.arch}_x{self.scale}_dense"
        return f"{self.arch}_x{self.scale}_{self.method}_r{self.ratio:g}"

    @property
    def file(self) -> str:
        return f"{self.name}.safetensors"

    def config(self, data: str | None, device: str) -> TrainConfig:
        protocol = PROTOCOLS[(self.arch, self.scale)]
        return TrainConfig(
            arch=self.arch,
            scale=self.scale,
            method=self.method,
            ratio=self.ratio,
            # alpha only matters to ISS-P; the other methods keep the default so that a
            # new sweep result does not invalidate their half-trained states.
            alpha=ALPHA if self.method == "issp" else TrainConfig.alpha,
            data=data,
            device=device,
            seed=0,
            **protocol,
        )


def zoo_plan() -> list[ZooEntry]:
    """All checkpoints, in build order: the most useful (x2, mid ratios) first."""
    plan = []
    for arch, scale in PROTOCOLS:
        plan.append(ZooEntry(arch, scale, "dense", 0.0))
        ratios = sorted(PLAN_RATIOS[(arch, scale)], key=lambda r: (abs(r - 0.9), r))
        for ratio in ratios:
            plan += [ZooEntry(arch, scale, method, ratio) for method in ("issp", "iht")]
    return plan


def load_manifest(path: Path | None = None) -> dict:
    """The manifest (default: the zoo's), or an empty one if none was written yet."""
    path = path or MANIFEST
    if not path.exists():
        return {"checkpoints": []}
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _manifest_for_update():
    """Yield the current manifest and write it back, holding a lock throughout.

    Several builds may run side by side (one per core) while ``zoo eval`` refreshes the
    scores: each reads the manifest under the lock, so none overwrites another's records.
    """
    with FileLock(MANIFEST.with_suffix(".lock")):
        manifest = load_manifest()
        yield manifest
        _write_json(MANIFEST, manifest)


def find_entry(manifest: dict, arch: str, scale: int, method: str, ratio: float) -> dict:
    """The manifest record for a model; ratio 0 means the dense model of any method."""
    if ratio == 0:
        method = "dense"
    for record in manifest["checkpoints"]:
        if (
            record["arch"] == arch
            and record["scale"] == scale
            and record["method"] == method
            and abs(record["ratio"] - ratio) < 1e-9
        ):
            return record
    have = sorted(
        r["ratio"] for r in manifest["checkpoints"] if r["arch"] == arch and r["scale"] == scale
    )
    raise IsspError(
        f"no {method} checkpoint of {arch} x{scale} at ratio {ratio:g} "
        f"(available ratios: {', '.join(f'{r:g}' for r in sorted(set(have))) or 'none'})"
    )


def load_zoo_model(
    arch: str,
    scale: int,
    method: str,
    ratio: float,
    manifest: dict | None = None,
    zoo_dir: Path | None = None,
) -> tuple[nn.Module, dict]:
    """Load a zoo checkpoint from ``zoo_dir`` after checking its sha256 against the manifest.

    Without ``zoo_dir``, the shipped zoo; without ``manifest``, the one in ``zoo_dir``.
    """
    zoo_dir = ZOO_DIR if zoo_dir is None else zoo_dir
    manifest = manifest or load_manifest(zoo_dir / MANIFEST.name)
    record = find_entry(manifest, arch, scale, method.lower(), ratio)
    path = zoo_dir / record["file"]
    if not path.exists():
        raise IsspError(f"{path} is listed in the manifest but missing")
    if sha256(path) != record["sha256"]:
        raise IsspError(f"{path} does not match the manifest's sha256; refusing to load it")
    model, _ = load_checkpoint(path, scale=scale, arch=arch)
    return model, record


def evaluate_checkpoint(model: nn.Module | None, test_dir: Path, scale: int) -> dict:
    """Mean PSNR/SSIM on each test set present under ``test_dir``."""
    scores = {}
    for name in TEST_SETS:
        if (test_dir / name).is_dir():
            result = evaluate_folder(model, test_dir / name, scale)
            scores[name.lower()] = {
                "psnr": round(result["psnr"], 4),
                "ssim": round(result["ssim"], 5),
            }
    return scores


def _record(entry: ZooEntry, path: Path, model: nn.Module, meta: dict) -> dict:
    summary = model_summary(model, FLOPS_INPUT)
    return {
        "file": entry.file,
        "arch": entry.arch,
        "scale": entry.scale,
        "method": entry.method,
        "ratio": entry.ratio,
        "alpha": float(meta["alpha"]) if entry.method == "issp" else None,
        "steps": int(meta["steps"]),
        "prune_steps": int(meta["prune_steps"]),
        "seed": int(meta["seed"]),
        "sha256": sha256(path),
        "params": summary["params"],
        "nonzeros": summary["nonzeros"],
        "flops_input": list(FLOPS_INPUT),
        "flops_dense": summary["flops_dense"],
        "flops_sparse": summary["flops_sparse"],
        "device": meta.get("device", "unknown"),
        "data": meta.get("data", ""),
    }


def build(
    data: str | None,
    test: Path | None,
    device: str = "cpu",
    only: str | None = None,
    log=print,
) -> None:
    """Train, evaluate and record every missing zoo checkpoint; resumable at any point."""
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    TELEMETRY_DIR.mkdir(parents=True, exist_ok=True)
    for entry in zoo_plan():
        if only and only not in entry.name:
            continue
        if _is_built(entry):
            continue
        work = WORK_DIR / entry.file
        with _claim(work) as claimed:
            if not claimed:
                log(f"[{time.strftime('%H:%M:%S')}] skipping {entry.name}: another build has it")
            elif not _is_built(entry):  # another build may have finished it meanwhile
                _train_entry(entry, work, data, test, device, log)


def _is_built(entry: ZooEntry) -> bool:
    final = ZOO_DIR / entry.file
    done = [r for r in load_manifest()["checkpoints"] if r["file"] == entry.file]
    return bool(done) and final.exists() and sha256(final) == done[0]["sha256"]


@contextlib.contextmanager
def _claim(work: Path):
    """Hold a lock on one zoo entry, so that builds running side by side split the plan."""
    try:
        with FileLock(work.with_suffix(".lock"), timeout=0):
            yield True
    except Timeout:
        yield False


def _train_entry(
    entry: ZooEntry, work: Path, data: str | None, test: Path | None, device: str, log
) -> None:
    """Train (or resume) one entry, then move it into the zoo and record it."""
    final = ZOO_DIR / entry.file
    log(f"[{time.strftime('%H:%M:%S')}] training {entry.name}")
    started = time.time()
    train(entry.config(data, device), work, resume=True)
    model, meta = load_checkpoint(work)
    os.replace(work, final)
    os.replace(telemetry_path(work), TELEMETRY_DIR / f"{entry.name}.npz")
    record = _record(entry, final, model, meta)
    # The checkpoint counts every session of a resumed run; older ones only this one.
    record["train_seconds"] = float(meta.get("train_seconds", round(time.time() - started, 1)))
    if test is not None:
        record.update(evaluate_checkpoint(model, test, entry.scale))
    with _manifest_for_update() as manifest:
        manifest["checkpoints"] = [
            r for r in manifest["checkpoints"] if r["file"] != entry.file
        ] + [record]
        manifest["checkpoints"].sort(key=lambda r: (r["arch"], r["scale"], r["method"], r["ratio"]))
        manifest["protocols"] = {f"{a} x{s}": p for (a, s), p in PROTOCOLS.items()}
    state = Path(f"{work}.state.pt")
    if state.exists():
        state.unlink()
    psnr = record.get("set5", {}).get("psnr")
    log(
        f"[{time.strftime('%H:%M:%S')}] done {entry.name} in {record['train_seconds']:.0f} s"
        + (f", Set5 {psnr:.2f} dB" if psnr else "")
    )


SWEEP = ROOT / "analysis" / "alpha_sweep.md"


def sweep_alpha(
    data: str | None,
    alphas: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999),
    ratio: float = 0.95,
    steps: int = 1000,
    device: str = "cpu",
    log=print,
) -> str:
    """Short edsr-tiny x2 runs of ISS-P at several alphas (and IHT), scored on a validation
    split carved out of the training images; returns and stores the table as Markdown."""
    base = ZooEntry("edsr-tiny", 2, "issp", ratio).config(data, device)
    runs = [("iht", None)] + [("issp", alpha) for alpha in alphas]
    rows = []
    for method, alpha in runs:
        config = dataclasses.replace(
            base,
            method=method,
            alpha=alpha if alpha is not None else TrainConfig.alpha,
            steps=steps,
            prune_steps=int(0.6 * steps),
            val_every=steps,
        )
        label = "IHT" if alpha is None else f"ISS-P alpha={alpha:g}"
        log(f"[{time.strftime('%H:%M:%S')}] sweep {label}")
        out = WORK_DIR / "sweep" / f"{method}_{alpha}.safetensors"
        history = train(config, out, resume=True)
        flips = float(np.load(telemetry_path(out))["flips"].sum())
        rows.append((label, history["val_psnr"][-1], flips))
    lines = [
        f"# Alpha sweep\n\nMade by `python -m issp zoo sweep --data {data}` on "
        f"{machine_description()}, {time.strftime('%Y-%m-%d')}: edsr-tiny x2, ratio {ratio}, "
        f"{steps} steps, Kp = {int(0.6 * steps)}, otherwise the zoo protocol. PSNR (Y) on the "
        "validation split carved out of the training images (never Set5/Set14).\n",
        "| run | validation PSNR (dB) | mask flips (all layers, all steps) |",
        "|---|---|---|",
    ]
    _, val_paths, _ = training_images(base)
    bicubic = evaluate_arrays(None, validation_crops(val_paths, base.scale), base.scale)["psnr"]
    lines.append(f"| bicubic (reference) | {bicubic:.3f} | |")
    lines += [f"| {label} | {psnr:.3f} | {flips:,.0f} |" for label, psnr, flips in rows]
    table = "\n".join(lines) + "\n"
    SWEEP.write_text(table)
    return table


def evaluate_zoo(test: Path) -> list[dict]:
    """Re-evaluate every manifest checkpoint (and bicubic) and refresh the manifest."""
    manifest = load_manifest()
    rows = []
    for arch, scale in sorted({(r["arch"], r["scale"]) for r in manifest["checkpoints"]}):
        rows.append(
            {
                "arch": arch,
                "scale": scale,
                "method": "bicubic",
                "ratio": None,
                "nonzeros": None,
                "flops_sparse": None,
                **evaluate_checkpoint(None, test, scale),
            }
        )
        records = [r for r in manifest["checkpoints"] if (r["arch"], r["scale"]) == (arch, scale)]
        records.sort(key=lambda r: (r["method"] != "dense", r["ratio"], r["method"]))
        for record in records:
            model, _ = load_zoo_model(arch, scale, record["method"], record["ratio"], manifest)
            record.update(evaluate_checkpoint(model, test, scale))
            rows.append(record)
    scores = {r["file"]: r for r in rows if "file" in r}
    with _manifest_for_update() as current:
        for record in current["checkpoints"]:
            if record["file"] in scores and record["sha256"] == scores[record["file"]]["sha256"]:
                record.update(
                    {
                        k: scores[record["file"]][k]
                        for k in SCORE_KEYS
                        if k in scores[record["file"]]
                    }
                )
    return rows


def verify_zoo(test: Path | None = None, tolerance_db: float = 0.02) -> list[dict]:
    """Check every manifest entry against its file, and (with ``test``) its Set5 PSNR.

    Per entry: the file exists, its sha256 matches, every pruned layer's sparsity is within
    0.5% of the ratio, and the Set5 PSNR measured now is within ``tolerance_db`` of the
    manifest's. Returns one row per entry with the measured values and ``ok``.
    """
    rows = []
    for record in load_manifest()["checkpoints"]:
        path = ZOO_DIR / record["file"]
        row = {"file": record["file"], "exists": path.is_file(), "ok": False}
        rows.append(row)
        if not row["exists"]:
            continue
        row["sha256_ok"] = sha256(path) == record["sha256"]
        if not row["sha256_ok"]:
            continue  # not the file the manifest describes: nothing more to check
        info = checkpoint_info(path)
        row["sparsity_error"] = max(
            (
                abs(1 - layer["nonzeros"] / layer["numel"] - record["ratio"])
                for layer in info["layers"]
            ),
            default=0.0,
        )
        row["ok"] = row["sha256_ok"] and row["sparsity_error"] <= 0.005
        if test is not None and (test / "Set5").is_dir():
            model, _ = load_checkpoint(path)
            row["set5_psnr"] = evaluate_folder(model, test / "Set5", record["scale"])["psnr"]
            row["set5_manifest"] = record.get("set5", {}).get("psnr")
            row["ok"] = (
                row["ok"]
                and row["set5_manifest"] is not None
                and abs(row["set5_psnr"] - row["set5_manifest"]) <= tolerance_db
            )
    return rows


def results_markdown(rows: list[dict], command: str) -> str:
    """The results table as Markdown, with the machine and command that made it."""
    lines = [
        f"Made by `{command}` on {machine_description()}, {time.strftime('%Y-%m-%d')}. "
        "PSNR (dB) / SSIM on the Y channel, border = scale; FLOPs for a 256x256 LR input.",
        "",
        "| model | method | ratio | Set5 PSNR | Set5 SSIM | Set14 PSNR | Set14 SSIM "
        "| non-zero weights | sparse GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        set5, set14 = row.get("set5", {}), row.get("set14", {})
        ratio = "" if row["ratio"] is None else f"{row['ratio']:g}"
        nonzeros = "" if row["nonzeros"] is None else f"{row['nonzeros']:,}"
        flops = "" if row["flops_sparse"] is None else f"{row['flops_sparse'] / 1e9:.2f}"
        lines.append(
            f"| {row['arch']} x{row['scale']} | {row['method']} | {ratio} "
            f"| {set5.get('psnr', float('nan')):.2f} | {set5.get('ssim', float('nan')):.4f} "
            f"| {set14.get('psnr', float('nan')):.2f} | {set14.get('ssim', float('nan')):.4f} "
            f"| {nonzeros} | {flops} |"
        )
    return "\n".join(lines + _comparison_lines(rows) + _training_time_lines(rows)) + "\n"


def _training_time_lines(rows: list[dict]) -> list[str]:
    """Wall-clock training time per arch and scale, summed from the manifest's records."""
    totals: dict[str, list] = {}
    for row in rows:
        if row.get("train_seconds") is not None:
            total = totals.setdefault(f"{row['arch']} x{row['scale']}", [0.0, 0, set()])
            total[0] += row["train_seconds"]
            total[1] += 1
            total[2].add(row.get("device", "unknown"))
    if not totals:
        return []
    parts = [
        f"{name}: {seconds / 3600:.1f} h for {count} checkpoints ({', '.join(sorted(devices))})"
        for name, (seconds, count, devices) in totals.items()
    ]
    return ["", "Training time (wall clock, one thread per run): " + "; ".join(parts) + "."]


def _comparison_lines(rows: list[dict]) -> list[str]:
    """ISS-P minus IHT, and ISS-P minus dense, at every ratio where both were trained."""
    by_key = {(r["arch"], r["scale"], r["method"], r["ratio"]): r for r in rows}
    dense = {(r["arch"], r["scale"]): r for r in rows if r["method"] == "dense"}

    def difference(a: dict | None, b: dict | None, test_set: str) -> str:
        if a is None or b is None or test_set not in a or test_set not in b:
            return ""
        return f"{a[test_set]['psnr'] - b[test_set]['psnr']:+.2f}"

    lines = []
    for arch, scale, method, ratio in sorted(k for k in by_key if k[2] == "issp"):
        issp, iht = by_key[(arch, scale, method, ratio)], by_key.get((arch, scale, "iht", ratio))
        cells = [difference(issp, iht, s) for s in SCORE_KEYS]
        cells += [difference(issp, dense.get((arch, scale)), s) for s in SCORE_KEYS]
        if any(cells):
            lines.append(f"| {arch} x{scale} | {ratio:g} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [
        "",
        "ISS-P minus IHT and ISS-P minus dense at each ratio (PSNR, dB; positive means ISS-P "
        "is higher):",
        "",
        "| model | ratio | vs IHT, Set5 | vs IHT, Set14 | vs dense, Set5 | vs dense, Set14 |",
        "|---|---|---|---|---|---|",
        *lines,
    ]


def dynamics_markdown(rows: list[dict], telemetry_dir: Path | None = None) -> str:
    """What each sparse run's stored telemetry says about its mask during pruning.

    Mask flips are counted over the pruning stage (steps before Kp) and over its last
    fifth; the magnitude ratio is mean |w| of the selected (shrunk or zeroed) weights over
    mean |w| of the kept ones on the last pruning step, averaged over layers: near 0 means
    freezing the mask at Kp changes little, near 1 means it removes weights still in use.
    """
    telemetry_dir = TELEMETRY_DIR if telemetry_dir is None else telemetry_dir
    lines = []
    for row in rows:
        path = telemetry_dir / f"{Path(row.get('file', '')).stem}.npz"
        if row["method"] not in ("issp", "iht") or not path.is_file():
            continue
        with np.load(path) as telemetry:
            flips = telemetry["flips"].sum(axis=1)
            kept, selected = telemetry["kept_abs"], telemetry["selected_abs"]
        # Row t - 1 is step t; the pruning stage is steps 1 .. Kp - 1, the freeze is step Kp.
        last = int(row["prune_steps"]) - 1
        late = flips[last - max(last // 5, 1) : last].sum()
        ratio = float(np.mean(selected[last - 1] / np.maximum(kept[last - 1], 1e-12)))
        alpha = "" if row.get("alpha") is None else f"{row['alpha']:g}"
        lines.append(
            f"| {row['arch']} x{row['scale']} | {row['method']} | {alpha} | {row['ratio']:g} "
            f"| {flips[:last].sum():,.0f} | {late:,.0f} | {ratio:.4f} |"
        )
    if not lines:
        return ""
    return (
        "\n".join(
            [
                "Mask dynamics from the stored telemetry (`analysis/telemetry/`): mask flips over "
                "the pruning stage and over its last fifth, and mean |w| of the selected weights "
                "over mean |w| of the kept ones on the last pruning step.",
                "",
                "| model | method | alpha | ratio | flips before Kp | flips, last fifth "
                "| selected/kept magnitude at Kp |",
                "|---|---|---|---|---|---|---|",
                *lines,
            ]
        )
        + "\n"
    )


def write_results(table: str) -> None:
    """Store the table in analysis/results.md and between the README's markers."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("# Zoo results\n\n" + table)
    start, end = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"
    if README.exists():
        text = README.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            README.write_text(head + start + "\n" + table + end + rest.split(end, 1)[1])
