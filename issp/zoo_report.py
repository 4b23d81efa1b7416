"""The zoo's results as Markdown: the scores table, ISS-P against IHT and dense, training
time, and what each run's stored telemetry says about its mask.

``python -m issp zoo eval`` writes them to ``analysis/results.md`` and between the
``zoo-table`` markers of ``docs/zoo.md`` (a zoo built elsewhere with ``--zoo DIR``: to
``DIR/results.md``).
"""

from __future__ import annotations

import time
from pathlib import Path

from issp import catalogue
from issp.catalogue import FLOPS_INPUT, SCORE_KEYS, Record, Score
from issp.dynamics import mask_dynamics
from issp.files import write_text
from issp.machine import machine_description
from issp.methods import COMPARED

DOCS = catalogue.ROOT / "docs"  # the manual; generated sections sit between markers there


def table_order(records: list[Record]) -> list[Record]:
    """Per arch and scale: the dense model, then by ratio, IHT before ISS-P."""
    return sorted(records, key=lambda r: (r.arch, r.scale, r.method != "dense", r.ratio, r.method))


def _score_cells(scores: dict[str, Score]) -> str:
    cells = []
    for key in SCORE_KEYS:
        score = scores.get(key, Score(float("nan"), float("nan")))
        cells += [f"{score.psnr:.2f}", f"{score.ssim:.4f}"]
    return " | ".join(cells)


def results_markdown(
    records: list[Record], bicubic: dict[tuple[str, int], dict[str, Score]], command: str
) -> str:
    """The results table as Markdown, with the machine and command that made it: per arch
    and scale a bicubic row (from ``bicubic``) above the checkpoints' rows."""
    lines = [
        f"Made by `{command}` on {machine_description()}, {time.strftime('%Y-%m-%d')}. "
        "PSNR (dB) / SSIM on the Y channel, border = scale; FLOPs for a "
        f"{FLOPS_INPUT[0]}x{FLOPS_INPUT[1]} LR input.",
        *_protocol_lines(records),
        "",
        "| model | method | ratio | Set5 PSNR | Set5 SSIM | Set14 PSNR | Set14 SSIM "
        "| non-zero weights | sparse GFLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = table_order(records)
    for arch, scale in sorted({(r.arch, r.scale) for r in records} | set(bicubic)):
        if (arch, scale) in bicubic:
            cells = _score_cells(bicubic[(arch, scale)])
            lines.append(f"| {arch} x{scale} | bicubic |  | {cells} |  |  |")
        for r in (r for r in ordered if (r.arch, r.scale) == (arch, scale)):
            lines.append(
                f"| {r.arch} x{r.scale} | {r.method} | {r.ratio:g} | {_score_cells(r.scores)} "
                f"| {r.nonzeros:,} | {r.flops_sparse / 1e9:.2f} |"
            )
    return "\n".join(lines + _comparison_lines(records) + _training_time_lines(ordered)) + "\n"


def _protocol_lines(records: list[Record]) -> list[str]:
    """How many checkpoints each training protocol (``issp.train.PROTOCOLS``) and seed made,
    from the records; the first zoo's records name neither."""
    if not records:
        return []

    def counted(values: list) -> str:
        counts = {value: values.count(value) for value in dict.fromkeys(values)}
        return ", ".join(f"{value} for {count}" for value, count in counts.items())

    protocols = counted([r.protocol or "not recorded" for r in records])
    seeds = counted([r.seed if r.seed is not None else "not recorded" for r in records])
    return [f"Protocol (`issp/train.py: PROTOCOLS`): {protocols}; seed {seeds}."]


def _training_time_lines(records: list[Record]) -> list[str]:
    """Wall-clock training time per arch and scale, summed from the manifest's records."""
    totals: dict[str, list] = {}
    for record in records:
        if record.train_seconds is not None:
            total = totals.setdefault(f"{record.arch} x{record.scale}", [0.0, 0, set()])
            total[0] += record.train_seconds
            total[1] += 1
            total[2].add("unknown" if record.device is None else record.device)
    if not totals:
        return []
    parts = [
        f"{name}: {seconds / 3600:.1f} h for {count} checkpoints ({', '.join(sorted(devices))})"
        for name, (seconds, count, devices) in totals.items()
    ]
    return ["", "Training time (wall clock, one thread per run): " + "; ".join(parts) + "."]


def _difference(a: Record | None, b: Record | None, key: str) -> str:
    if a is None or b is None or key not in a.scores or key not in b.scores:
        return ""
    return f"{a.scores[key].psnr - b.scores[key].psnr:+.2f}"


def _comparison_lines(records: list[Record]) -> list[str]:
    """ISS-P minus IHT, and ISS-P minus dense, at every ratio where both were trained."""
    by_key = {(r.arch, r.scale, r.method, r.ratio): r for r in records}
    dense = {(r.arch, r.scale): r for r in records if r.method == "dense"}
    lines = []
    for arch, scale, method, ratio in sorted(k for k in by_key if k[2] == "issp"):
        issp, iht = by_key[(arch, scale, method, ratio)], by_key.get((arch, scale, "iht", ratio))
        cells = [_difference(issp, iht, key) for key in SCORE_KEYS]
        cells += [_difference(issp, dense.get((arch, scale)), key) for key in SCORE_KEYS]
        if any(cells):
            lines.append(f"| {arch} x{scale} | {ratio:g} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    return [
        "",
        "ISS-P minus IHT and ISS-P minus dense at each ratio (PSNR, dB; positive means ISS-P "
        "is higher). One seed per checkpoint: a gap of a few tenths of a dB can be seed noise; "
        "`analysis/study.md` compares the methods over paired seeds with intervals.",
        "",
        "| model | ratio | vs IHT, Set5 | vs IHT, Set14 | vs dense, Set5 | vs dense, Set14 |",
        "|---|---|---|---|---|---|",
        *lines,
    ]


def dynamics_markdown(records: list[Record], telemetry_dir: Path | None = None) -> str:
    """What each sparse run's stored telemetry says about its mask (``MaskDynamics``)."""
    telemetry_dir = catalogue.TELEMETRY_DIR if telemetry_dir is None else telemetry_dir
    lines = []
    for record in table_order(records):
        path = telemetry_dir / f"{Path(record.file).stem}.npz"
        if record.method not in COMPARED or not path.is_file():
            continue
        dynamics = mask_dynamics(path, int(record.prune_steps))
        alpha = "" if record.alpha is None else f"{record.alpha:g}"
        lines.append(
            f"| {record.arch} x{record.scale} | {record.method} | {alpha} | {record.ratio:g} "
            f"| {dynamics.flips_before_kp:,.0f} | {dynamics.flips_last_fifth:,.0f} "
            f"| {dynamics.selected_over_kept:.4f} |"
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


def write_results(table: str, zoo_dir: Path | None = None) -> Path:
    """Store the table of the zoo in ``zoo_dir`` (default: the checkout's) where the app
    reads it (``catalogue.results_file``), and the checkout's zoo's also between the
    markers of ``docs/zoo.md``. Returns the file written."""
    zoo_dir = zoo_dir or catalogue.ZOO_DIR
    path = catalogue.results_file(zoo_dir)
    write_text(path, "# Zoo results\n\n" + table)
    if catalogue.is_checkout_zoo(zoo_dir):
        write_doc_section(DOCS / "zoo.md", "zoo-table", table)
    return path


def write_doc_section(doc: Path, name: str, text: str) -> bool:
    """Put ``text`` between ``doc``'s ``<!-- name:start -->`` and ``<!-- name:end -->``
    markers, so that its figures come from the command that writes them; False (and the
    file untouched) where the markers are missing."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = doc.read_text() if doc.exists() else ""
    if start not in content or end not in content:
        return False
    head, rest = content.split(start, 1)
    write_text(doc, head + start + "\n" + text + end + rest.split(end, 1)[1])
    return True
