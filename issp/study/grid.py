"""The validation grid that sets the study's learning rate, pruned layers and alpha: its
phases (``run_grid``), its choice (``choose_protocol``) and ``analysis/protocol_grid.md``.

Scored on the validation images carved out of the training folder only, never on
Set5/Set14, so the study's test sets play no part in choosing its protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from issp.evaluate import evaluate_arrays, validation_crops
from issp.files import write_text
from issp.study.plan import REPORT_DIR, RunFolders, grid_plan
from issp.study.runner import execute
from issp.study.stats import issp_minus_iht
from issp.train import AUTHORS_ALPHA, TrainConfig, training_images


@dataclass(frozen=True)
class GridChoice:
    """What the validation grid chose, and the scores it chose by."""

    lr: float
    prune_edges: bool
    alpha: float
    reference_alpha: float
    lr_scores: dict[str, float]  # per rate: mean of IHT's and ISS-P's mean validation PSNR
    lr_runs: dict[str, int]  # per rate: its IHT runs with every conv pruned (seeds x ratios)
    edge_scores: dict[str, float]  # the same, first and last conv pruned or left dense
    table: dict[str, dict]  # per grid setting: mean validation PSNR and number of runs


def choose_protocol(results: Sequence[dict], reference_alpha: float) -> GridChoice:
    """The grid's choice, on validation PSNR only, one setting at a time:

    1. the learning rate: the best mean of IHT's and ISS-P's (at ``reference_alpha``)
       mean validation PSNR with every conv pruned, so it is not picked for ISS-P alone;
    2. at that rate, whether the first and last conv are pruned, by the same score;
    3. at both, ISS-P's best alpha.
    """
    val: dict[tuple[str, float, float | None, bool], list[float]] = {}
    for r in results:
        c = r["config"]
        key = (
            c["method"],
            c["lr"],
            c["alpha"] if c["method"] == "issp" else None,
            c["prune_edges"],
        )
        val.setdefault(key, []).append(r["val_psnr"])

    def score(lr: float, edges: bool) -> float:
        pair = (val[("iht", lr, None, edges)], val[("issp", lr, reference_alpha, edges)])
        return float(np.mean(pair[0]) + np.mean(pair[1])) / 2

    lrs = sorted({lr for _, lr, _, edges in val if edges})
    lr_scores = {f"{x:g}": score(x, True) for x in lrs}
    # Rates screened out after the first seed have fewer runs; a mean over one seed is not
    # comparable with a mean over three, so the choice is among the rates run at every seed.
    runs = {x: len(val[("iht", x, None, True)]) for x in lrs}
    lr = max((x for x in lrs if runs[x] == max(runs.values())), key=lambda x: score(x, True))
    lr_runs = {f"{x:g}": n for x, n in runs.items()}
    edge_options = sorted({e for m, x, _, e in val if m == "iht" and x == lr})
    edge_scores = {("pruned" if e else "dense"): score(lr, e) for e in edge_options}
    edges = max(edge_options, key=lambda e: score(lr, e))
    alphas = sorted(a for m, x, a, e in val if m == "issp" and x == lr and e == edges)
    alpha = max(alphas, key=lambda a: np.mean(val[("issp", lr, a, edges)]))
    table = {}
    for m, x, a, e in sorted(val, key=lambda k: (k[1], not k[3], k[0], k[2] or 0)):
        what = "IHT" if m == "iht" else f"ISS-P alpha {a:g}"
        table[f"{what}, lr {x:g}, first/last conv {'pruned' if e else 'dense'}"] = {
            "mean_val_psnr": float(np.mean(val[m, x, a, e])),
            "runs": len(val[m, x, a, e]),
        }
    return GridChoice(lr, edges, alpha, reference_alpha, lr_scores, lr_runs, edge_scores, table)


def promising_lrs(results: Sequence[dict], reference_alpha: float, within: float) -> list[float]:
    """The learning rates worth running at more seeds: those whose score (the mean of
    IHT's and ISS-P's mean validation PSNR, every conv pruned) is within ``within`` dB of
    the best. A rate 2-3 dB behind after one seed is far outside seed-to-seed spread
    (about 0.2 dB), so further seeds there would only spend CPU-hours."""
    choice = choose_protocol(results, reference_alpha)
    best = max(choice.lr_scores.values())
    return [float(lr) for lr, score in choice.lr_scores.items() if score >= best - within]


def run_grid(
    command: str,
    folders: RunFolders,
    out: Path,
    *,
    protocol: str,
    steps: int,
    data: str | None,
    lrs: Sequence[float],
    alphas: Sequence[float],
    ratios: Sequence[float],
    seeds: Sequence[int],
    precision: str,
    screen: float,
    jobs: int,
) -> GridChoice:
    """Train the grid's three phases (``choose_protocol``'s order: learning rate, pruned
    edges, alpha), then write its report into ``out`` and return its choice. Every rate
    runs at the first seed; the other seeds run only the rates within ``screen`` dB of the
    best (successive halving). ISS-P's rate and edges are chosen at the authors' alpha."""
    plan = functools.partial(grid_plan, protocol, steps, data, precision=precision)
    reference = AUTHORS_ALPHA
    first, rest = seeds[:1], seeds[1:]
    runs = plan(lrs, [reference], ratios=ratios, seeds=first)
    kept = promising_lrs(execute(runs, folders, {}, jobs=jobs), reference, screen)
    runs += plan(kept, [reference], ratios=ratios, seeds=rest)
    lr = choose_protocol(execute(runs, folders, {}, jobs=jobs), reference).lr
    cells = {"ratios": ratios, "seeds": seeds}
    runs += plan([lr], [reference], prune_edges=False, **cells)
    choice = choose_protocol(execute(runs, folders, {}, jobs=jobs), reference)
    others = [a for a in alphas if a != reference]
    third = plan([lr], others, prune_edges=choice.prune_edges, **cells)
    runs += [run for run in third if run.config.method == "issp"]
    results = execute(runs, folders, {}, jobs=jobs)
    return write_grid(results, command, reference, bicubic_validation(data, seeds), out)


def bicubic_validation(data: str | None, seeds: Sequence[int], scale: int = 2) -> float:
    """Bicubic's validation PSNR, averaged over the seeds' validation splits: the floor
    every grid score should clear."""
    scores = []
    for seed in seeds:
        config = TrainConfig(data=data, seed=seed, scale=scale)
        crops = validation_crops(training_images(config)[1], scale)
        scores.append(evaluate_arrays(None, crops, scale)["psnr"])
    return float(np.mean(scores))


def grid_markdown(
    results: Sequence[dict], command: str, reference_alpha: float, bicubic: float
) -> str:
    """``analysis/protocol_grid.md``: the validation grid and what it chose."""
    choice = choose_protocol(results, reference_alpha)
    configs = [r["config"] for r in results]
    lines = [
        "# Learning rate, pruned layers and alpha for the two-stage protocol (validation only)",
        "",
        f"Made by `{command}` on {', '.join(sorted({r['device'] for r in results}))}, "
        f"{time.strftime('%Y-%m-%d')}. edsr-tiny x2, {configs[0]['steps']} steps, "
        f"ratios {', '.join(f'{x:g}' for x in sorted({c['ratio'] for c in configs}))}, "
        f"seeds {', '.join(str(x) for x in sorted({c['seed'] for c in configs}))}. "
        "Scored on the validation images carved out of the training folder (never "
        "Set5/Set14). One setting at a time: (1) IHT and ISS-P at alpha "
        f"{reference_alpha:g} (the authors' shrink factor) at every learning rate, every conv "
        "pruned as in the authors' code; the rate with the best mean of the two methods' mean "
        "validation PSNR is chosen (so it is not picked for ISS-P alone). (2) At that rate, "
        "the same two with the first and last conv left dense; the better of the two by the "
        "same score is chosen. (3) ISS-P at the other alphas with both settings fixed; its "
        "best alpha is chosen.",
    ]
    runs = choice.lr_runs
    screened = [lr for lr, n in runs.items() if n < max(runs.values())]
    if screened:
        lines[-1] += (
            f" Rates {', '.join(screened)} ran at the first seed only: they were further "
            "behind the best rate than the screen (`--screen`, successive halving), and the "
            "choice is among the rates run at every seed."
        )
    lines += [
        "",
        "| run | mean validation PSNR (dB) | runs |",
        "|---|---|---|",
        f"| bicubic (reference) | {bicubic:.3f} | |",
    ]
    lines += [
        f"| {name} | {row['mean_val_psnr']:.3f} | {row['runs']} |"
        for name, row in choice.table.items()
    ]
    lines += [
        "",
        "Per learning rate, mean of the two methods' means: "
        + ", ".join(f"{lr}: {score:.3f} dB" for lr, score in choice.lr_scores.items())
        + ". First and last conv at that rate: "
        + ", ".join(f"{what}: {score:.3f} dB" for what, score in choice.edge_scores.items())
        + ".",
        "",
        f"**Chosen: lr {choice.lr:g}, first and last conv "
        f"{'pruned' if choice.prune_edges else 'dense'}, alpha {choice.alpha:g}.**",
        "",
        *_grid_noise_markdown(results, choice),
    ]
    return "\n".join(lines) + "\n"


def _grid_noise_markdown(results: Sequence[dict], choice: GridChoice) -> list[str]:
    """The paired ISS-P minus IHT at the chosen settings: its seed-to-seed spread is what
    sets the width of the study's intervals."""
    chosen = [
        r
        for r in results
        if math.isclose(r["config"]["lr"], choice.lr)
        and r["config"]["prune_edges"] == choice.prune_edges
        and (r["config"]["method"] != "issp" or math.isclose(r["config"]["alpha"], choice.alpha))
    ]
    lines = [
        "Seed noise at the chosen settings: ISS-P minus IHT on validation, paired by seed. "
        "The spread of these differences, not their mean, is the finding here: it says how "
        "wide the study's 95% interval will be with this many seeds (at these short runs).",
        "",
        "| ratio | differences (dB) | mean | SD | 95% interval |",
        "|---|---|---|---|---|",
    ]
    for ratio in sorted({r["config"]["ratio"] for r in chosen}):
        pair = issp_minus_iht(chosen, 2, ratio, "val")
        if pair.n < 2:
            continue
        low, high = pair.interval
        spread = np.std(pair.differences, ddof=1)
        lines.append(
            f"| {ratio:g} | {', '.join(f'{d:+.3f}' for d in pair.differences)} "
            f"| {pair.mean:+.3f} | {spread:.3f} | [{low:+.3f}, {high:+.3f}] |"
        )
    return lines


def write_grid(
    results: Sequence[dict],
    command: str,
    reference_alpha: float,
    bicubic: float,
    out: Path = REPORT_DIR,
) -> GridChoice:
    """Write ``protocol_grid.md`` and ``protocol_grid.json`` into ``out``; return the choice."""
    text = grid_markdown(results, command, reference_alpha, bicubic)
    write_text(out / "protocol_grid.md", text)
    choice = choose_protocol(results, reference_alpha)
    data = {
        "command": command,
        "choice": dataclasses.asdict(choice),
        "bicubic_val_psnr": bicubic,
        "runs": list(results),
    }
    write_text(out / "protocol_grid.json", json.dumps(data, indent=1) + "\n")
    return choice
