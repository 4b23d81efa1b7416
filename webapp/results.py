"""The Results tab: the stored results table, where its numbers come from, one row per
checkpoint, and PSNR against pruning ratio or non-zero weights."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from issp import IsspError
from issp.catalogue import FLOPS_INPUT, SCORE_KEYS, Manifest, Record
from issp.methods import colour, label
from webapp.checks import echo

MANIFEST_COLUMNS = (
    "arch",
    "scale",
    "method",
    "ratio",
    "non-zero weights",
    "sparse GFLOPs",
    *(f"{key} {metric}" for key in SCORE_KEYS for metric in ("PSNR", "SSIM")),
    "trained on",
    "steps",
)
# One dash style per (arch, scale), so colour always means the method.
DASHES = ("solid", "dash", "dot", "dashdot")


def results_text(results_path: Path | None) -> str | None:
    """The stored results table (``analysis/results.md``), or None if none was written."""
    if results_path is None or not results_path.is_file():
        return None
    return results_path.read_text()


def manifest_rows(manifest: Manifest) -> list[dict]:
    """One flat row per zoo checkpoint with its stored scores, size and provenance."""
    rows = []
    for record in manifest.checkpoints:
        row: dict = {
            "arch": record.arch,
            "scale": record.scale,
            "method": label(record.method),
            "ratio": record.ratio,
            "non-zero weights": record.nonzeros,
            "sparse GFLOPs": round(record.flops_sparse / 1e9, 3),
        }
        for key in SCORE_KEYS:
            score = record.scores.get(key)
            row[f"{key} PSNR"] = None if score is None else score.psnr
            row[f"{key} SSIM"] = None if score is None else score.ssim
        row["trained on"] = "" if record.device is None else record.device
        row["steps"] = record.steps
        rows.append(row)
    return rows


def provenance(manifest: Manifest, results_path: Path | None) -> str:
    """Where the stored numbers come from: command, devices and protocol."""
    devices = sorted({"unknown" if r.device is None else r.device for r in manifest.checkpoints})
    lines = [
        "Scores are stored by `python -m issp zoo build --data DIR --test DIR` (training, "
        "then Set5/Set14 evaluation) and refreshed by `python -m issp zoo eval`; PSNR/SSIM "
        "on the Y channel with border = scale, FLOPs for a "
        f"{FLOPS_INPUT[0]}x{FLOPS_INPUT[1]} LR input.",
    ]
    if devices:
        lines.append(f"Checkpoints trained on: {'; '.join(devices)}.")
    if manifest.alpha is not None:
        lines.append(f"ISS-P alpha = {manifest.alpha}.")
    for name, protocol in manifest.protocols.items():
        settings = ", ".join(f"{k} {v}" for k, v in protocol.items())
        lines.append(f"Protocol {name}: {settings}.")
    if results_text(results_path) is None:
        lines.append("No results table has been written yet; the table below is the manifest's.")
    return "\n\n".join(lines)


def _lines(scored: list[Record]) -> dict[tuple, list[Record]]:
    """The chart's lines: per (arch, scale, method), each pruned method's line starting at
    its dense model; a pair with only a dense model gets a line of that point."""
    dense = {(r.arch, r.scale): r for r in scored if r.method == "dense"}
    lines: dict[tuple, list[Record]] = {}
    for record in sorted(scored, key=lambda r: r.ratio):
        if record.method != "dense":
            lines.setdefault((record.arch, record.scale, record.method), []).append(record)
    for key in dense:
        if not any(line[:2] == key for line in lines):
            lines[(*key, "dense")] = []
    return {key: ([dense[key[:2]]] if key[:2] in dense else []) + lines[key] for key in lines}


def results_figure(manifest: Manifest, x_axis: str = "ratio", test_set: str = "set5") -> go.Figure:
    """Stored PSNR against pruning ratio (or non-zero weights), one line per arch/scale/method.

    Each pruned method's line starts at its dense model (ratio 0). Checkpoints without a
    score on ``test_set`` are left out; an empty zoo gives an empty chart that says so.
    """
    if x_axis not in ("ratio", "nonzeros"):
        raise IsspError(f"x axis must be 'ratio' or 'nonzeros', got {echo(x_axis)}")
    if test_set not in SCORE_KEYS:
        raise IsspError(f"test set must be one of {', '.join(SCORE_KEYS)}, got {echo(test_set)}")
    scored = [r for r in manifest.checkpoints if test_set in r.scores]
    lines = _lines(scored)
    figure = go.Figure()
    pairs = sorted({key[:2] for key in lines})
    dashes = {pair: DASHES[i % len(DASHES)] for i, pair in enumerate(pairs)}
    for arch, scale, method in sorted(lines):
        records = lines[(arch, scale, method)]
        figure.add_trace(
            go.Scatter(
                x=[r.ratio if x_axis == "ratio" else r.nonzeros for r in records],
                y=[r.scores[test_set].psnr for r in records],
                mode="lines+markers",
                name=f"{arch} x{scale} {label(method)}",
                line={"color": colour(method), "dash": dashes[(arch, scale)]},
                customdata=[[r.file, r.scores[test_set].ssim] for r in records],
                hovertemplate="%{customdata[0]}<br>PSNR %{y:.2f} dB, SSIM %{customdata[1]}",
            )
        )
    figure.update_layout(
        title=f"{test_set.capitalize()} PSNR of the zoo",
        xaxis_title="pruning ratio" if x_axis == "ratio" else "non-zero weights",
        yaxis_title="PSNR (dB, Y channel)",
        template="plotly_white",
    )
    if x_axis == "nonzeros":
        figure.update_xaxes(type="log")
    if not scored:
        figure.add_annotation(text=f"no stored {test_set.capitalize()} scores yet", showarrow=False)
    return figure
