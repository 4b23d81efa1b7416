"""The tabs that show pruning dynamics: the live comparison, the alpha sweep and the
zoo's stored runs, wired to :mod:`webapp.live` and :mod:`webapp.stored_runs`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import pandas as pd
from plotly.graph_objects import Figure

from analysis.lockstep import MAX_STEPS, LockstepConfig
from analysis.plots import FIGURES
from issp.selection import PER_LAYER
from webapp import live, stored_runs
from webapp.checks import MAX_SEED
from webapp.ui import RAW, SCALE_CHOICES, Server, figure_tabs, shown_to_user

SWEEP_STEPS = 150
SWEEP_PICKED = [0.0, 0.5, 0.9, 0.99]
TRAINING = {
    # Started at once: runs wait in LiveRuns, whose line is bounded, and so a second
    # Train press or Stop reaches a waiting run at once.
    "concurrency_limit": None,
    # The plots stay readable while they update.
    "show_progress": "minimal",
    # A second press submits its run while the first is still winding down.
    "trigger_mode": "multiple",
    **RAW,
}


@dataclass(frozen=True)
class RunControls:
    """The settings a live run and an alpha sweep share (pattern and alpha only the live
    run's)."""

    arch: gr.Dropdown
    scale: gr.Radio
    ratio: gr.Slider
    pattern: gr.Dropdown | None
    alpha: gr.Slider | None
    steps: gr.Number
    kp: gr.Number
    seed: gr.Number

    def inputs(self) -> list:
        """The controls in their endpoints' argument order."""
        own = [control for control in (self.pattern, self.alpha) if control is not None]
        return [self.arch, self.scale, self.ratio, *own, self.steps, self.kp, self.seed]


@shown_to_user
def pattern_ratio(pattern: str) -> dict:
    """The ratio slider set to what an N:M pattern prunes; left alone for per layer."""
    ratio = live.pattern_ratio(pattern)
    return gr.update() if ratio is None else gr.update(value=ratio)


def run_controls(steps: int, steps_label: str, prefix: str, live_only: bool) -> RunControls:
    """Lay out a run's settings, defaulting to ``LockstepConfig``'s; ``live_only`` adds the
    live run's own (pattern, alpha)."""
    defaults = LockstepConfig()
    arch = gr.Dropdown(list(live.LIVE_ARCHS), value=defaults.arch, label="Architecture")
    scale = gr.Radio(SCALE_CHOICES, value=defaults.scale, label="Scale")
    ratio = gr.Slider(0.0, 0.99, value=defaults.ratio, step=0.01, label="Pruning ratio")
    pattern = shrink = None
    if live_only:
        pattern = gr.Dropdown(
            list(live.PATTERNS),
            value=defaults.pattern or PER_LAYER,
            label="Selection (N:M: N of every M weights; sets the ratio to N/M)",
            elem_id=f"{prefix}-pattern",
        )
        pattern.input(pattern_ratio, [pattern], [ratio], api_visibility="private", **RAW)
        shrink = gr.Slider(
            0.01, 0.999, value=defaults.alpha, step=0.001, label="ISS-P alpha (shrink factor)"
        )
    count = gr.Number(value=steps, precision=0, label=steps_label, elem_id=f"{prefix}-steps")
    share = defaults.train_config().kp_fraction  # the live protocol's, as the run uses it
    kp = gr.Number(value=0, precision=0, label=f"Pruning stage Kp (steps; 0 = {share:.0%} of them)")
    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
    return RunControls(arch, scale, ratio, pattern, shrink, count, kp, seed)


def live_tab(server: Server) -> None:
    """The Live comparison tab: ISS-P and IHT (and the extras) trained in lockstep."""

    @shown_to_user
    def train_live(
        arch: str,
        scale: int,
        ratio: float,
        pattern: str,
        alpha: float,
        steps: int,
        prune_steps: int | None,
        seed: int,
        extra: list[str],
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Train ISS-P and IHT (and the extras) in lockstep, streaming figures and status."""
        config = live.live_config(
            arch, scale, ratio, alpha, steps, prune_steps, seed, extra, pattern
        )
        with server.runs.admitted(request.session_hash) as run:
            for status in server.runs.wait(run):
                yield *(None,) * len(FIGURES), status, None
            for view in live.live_run(config, run.stop, server.outputs.new):
                download = None if view.download is None else str(view.download)
                yield *view.figures, view.status, download

    with gr.Tab("Live comparison"), gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown(
                "ISS-P and IHT train side by side from the same initial weights on the "
                "same batches, so the pruning rule is the only difference. "
                f"At most {MAX_STEPS:,} steps. {server.runs.describe()}"
            )
            controls = run_controls(LockstepConfig.steps, "Steps", "live", live_only=True)
            extra = gr.CheckboxGroup(list(live.EXTRA_METHODS), label="Also train")
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id="live-train")
                stop_button = gr.Button("Stop", variant="stop", elem_id="live-stop")
        with gr.Column(scale=3):
            status = gr.Markdown("Press Train to start.", label="status", elem_id="live-status")
            download = gr.File(label="Run data (JSON)", elem_id="live-download")
            plots = figure_tabs("live")

    train_button.click(
        train_live,
        [*controls.inputs(), extra],
        [*plots, status, download],
        api_name="train_live",
        **TRAINING,
    )
    stop_button.click(server.stop_live, None, None, api_name="stop_live", concurrency_limit=None)


def sweep_tab(server: Server) -> None:
    """The Alpha sweep tab: one small ISS-P run per alpha, alpha 0 being IHT."""

    @shown_to_user
    def sweep(
        arch: str,
        scale: int,
        ratio: float,
        steps: int,
        prune_steps: int | None,
        seed: int,
        alphas: list[float],
        request: gr.Request,
    ) -> Iterator[tuple[pd.DataFrame | None, Figure | None, str]]:
        """Run ISS-P once per alpha (0 is IHT), streaming the table as rows arrive."""
        # alpha_sweep sets alpha per run; any valid one passes the check here.
        alpha = LockstepConfig.alpha
        config = live.live_config(arch, scale, ratio, alpha, steps, prune_steps, seed)
        live.checked_sweep(alphas, config.steps)
        with server.runs.admitted(request.session_hash) as run:
            for status in server.runs.wait(run):
                yield None, None, status
            for view in live.sweep_run(config, alphas, run.stop):
                table = pd.DataFrame(view.rows, columns=list(live.SWEEP_COLUMNS))
                # float32 PSNR printed in full reads as noise.
                yield table.round({"psnr": 2}), view.figure, view.status

    with gr.Tab("Alpha sweep"), gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown(
                "The same small ISS-P run once per alpha, from alpha 0 (which is IHT) "
                "towards 1: how much the mask moves, and what it costs or gains in PSNR. "
                f"At most {MAX_STEPS:,} steps in all. {server.runs.describe()}"
            )
            controls = run_controls(SWEEP_STEPS, "Steps per alpha", "sweep", live_only=False)
            alphas = gr.CheckboxGroup(
                [(live.alpha_name(a), a) for a in live.SWEEP_ALPHAS],
                value=SWEEP_PICKED,
                label="Alphas",
            )
            with gr.Row():
                sweep_button = gr.Button("Run sweep", variant="primary")
                stop_button = gr.Button("Stop", variant="stop")
        with gr.Column(scale=3):
            status = gr.Markdown("Press Run sweep to start.", label="status")
            plot = gr.Plot(label="flips and PSNR against alpha")
            table = gr.Dataframe(headers=list(live.SWEEP_COLUMNS), label="Runs")

    sweep_button.click(
        sweep,
        [*controls.inputs(), alphas],
        [table, plot, status],
        api_name="alpha_sweep",
        **TRAINING,
    )
    stop = {"api_visibility": "private", "concurrency_limit": None}
    stop_button.click(server.stop_live, None, None, **stop)


def stored_tab(server: Server) -> None:
    """The Stored dynamics tab: the zoo's full-length runs, drawn like a live one."""

    @shown_to_user
    def stored(choice: str | None) -> tuple:
        """The stored ISS-P / IHT dynamics of one setting, with its summary."""
        view = stored_runs.stored_view(server.telemetry_dir, choice, server.zoo.manifest())
        return *view.figures, view.status

    def stored_settings(choice: str | None) -> tuple:
        """Refresh the stored settings on offer (the zoo build adds them) and draw one."""
        choices = stored_runs.stored_choices(server.telemetry_dir)
        if choice not in choices:
            choice = next(iter(choices), None)
        return gr.update(choices=choices, value=choice), *stored(choice)

    with gr.Tab("Stored dynamics") as tab:
        gr.Markdown("The full-length runs the zoo was trained with: the same figures, no training.")
        with gr.Row():
            # Listed now, so an API client sees them (view_api) and may pick one before
            # its session has opened the tab; the zoo build may add more later, which
            # stored_view finds, as it checks against the folder, not this list.
            settings = stored_runs.stored_choices(server.telemetry_dir)
            choice = gr.Dropdown(
                settings,
                value=next(iter(settings), None),
                label="Setting (ISS-P and IHT both stored)",
            )
            refresh = gr.Button("Refresh", scale=0)
        status = gr.Markdown(label="summary", elem_id="stored-status")
        plots = figure_tabs("stored")

    shown = [*plots, status]
    refresh.click(stored_settings, [choice], [choice, *shown], api_name="stored_settings", **RAW)
    # Drawn when the tab is opened, not on every page load: stored runs are long.
    tab.select(stored_settings, [choice], [choice, *shown], api_visibility="private", **RAW)
    choice.input(stored, [choice], shown, api_name="stored", **RAW)
