"""Web app: upscale with a sparse SR network from the zoo, score it, browse results, and
watch ISS-P and IHT prune side by side (live, as an alpha sweep, or from stored runs).

``python app.py`` serves it (host and port from ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``, as on a Hugging Face Space); ``gradio app.py`` serves it in
reload mode. ``ISSP_ZOO_DIR`` points it at another checkpoint folder (default
``checkpoints/``: :func:`issp.catalogue.zoo_folder`); ``ISSP_DISK_MB`` bounds the disk
its files take (default ``DISK_MB``).
The layout lives here, one builder per tab; the work is done by :mod:`webapp`, which the
tests call without a UI.
"""

import contextlib
import functools
import inspect
import os
import signal
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Before gradio is imported: it reads this at import time, and a Space must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: oneDNN reads it once. Every new image size adds compiled
# primitives to a cache of 1,024 by default, which a server sees no end of (webapp.memory,
# which imports nothing heavy).
from webapp.memory import PRIMITIVE_CACHE  # noqa: E402

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from plotly.graph_objects import Figure  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from analysis.lockstep import MAX_STEPS, LockstepConfig  # noqa: E402
from analysis.plots import FIGURES  # noqa: E402
from issp import IsspError  # noqa: E402
from issp.catalogue import RESULTS, SCORE_KEYS, TELEMETRY_DIR, ZOO_DIR, zoo_folder  # noqa: E402
from issp.methods import COMPARED, label  # noqa: E402
from webapp import files, live, memory, model_choice, stored_runs, upscaling  # noqa: E402
from webapp.admission import LiveRuns  # noqa: E402
from webapp.checks import MAX_SEED, user_message  # noqa: E402
from webapp.model_choice import DEFAULT_ARCH  # noqa: E402
from webapp.model_zoo import ModelZoo  # noqa: E402
from webapp.results import (  # noqa: E402
    MANIFEST_COLUMNS,
    manifest_rows,
    provenance,
    results_figure,
    results_text,
)
from webapp.study_view import STUDY_JSON, study_page  # noqa: E402

# Upscale and Evaluate, the costly requests, share one queue (COMPUTE) that runs two at a
# time server-wide, which fits the two-core machines the app is meant for; more wait, and
# past QUEUE_SIZE waiting requests a new one is told the queue is full at once. The page's
# light requests (model options, tables, stored figures) have queues of their own of the
# same size, and live training its own line (TRAINING_SLOTS below).
CONCURRENCY = 2
COMPUTE = {"concurrency_id": "compute", "concurrency_limit": CONCURRENCY}
QUEUE_SIZE = 32
# One "Evaluate" sweep touches a dense model and 2 methods x 5 ratios: 11 models fit.
MODEL_CACHE = 16
# Results and Gradio's cache (uploads, and the files sent back: about 0.6 MB for a small
# upscale, 42 MB for a 1 MP x4 one) are kept under DISK_MB (ISSP_DISK_MB overrides it):
# an upload that would pass it is refused at the door (webapp.files.DiskBudget), and every
# PRUNE_SECONDS the oldest results, then the oldest cached files, are deleted down to it
# (never an upload younger than two minutes); Gradio's delete_cache also removes each
# file after an hour.
DISK_MB = 1024
CLIENT_SHARE = 0.25  # of DISK_MB per client per hour (ISSP_CLIENT_SHARE overrides it)
PRUNE_SECONDS = 10
# Live training runs and alpha sweeps run one at a time server-wide, so training takes one
# core at most and upscaling keeps the other. They wait in a line of their own (see
# webapp.admission), not in Gradio's queue: at most TRAINING_RUNS running or waiting, one
# per session, and past that a new one is refused at once, so the queue keeps room for
# upscaling however many training requests arrive.
TRAINING_SLOTS = 1
TRAINING_RUNS = 4
TRAINING_LINE = (
    f"Live runs and sweeps run {TRAINING_SLOTS} at a time server-wide; at most "
    f"{TRAINING_RUNS} run or wait at once, one per user (a new one replaces yours), and "
    "past that a new one is refused until one ends."
)
# The dynamics figures grouped into sub-tabs: a browser redraws only the visible ones, and
# all eight redrawn at every live update kept a busy machine's browser from responding.
FIGURE_TABS = {
    "Loss and PSNR": ("loss",),
    "Mask flips": ("flips", "flips_heatmap"),
    "Gradient flow": ("grad_norm", "grad_spread"),
    "Weights": ("sparsity", "magnitude", "weights"),
}
LIMITS = upscaling.Limits()
SCALE_CHOICES = [("x2", 2), ("x4", 4)]
SWEEP_STEPS = 150
SWEEP_PICKED = [0.0, 0.5, 0.9, 0.99]
# Every handler takes its inputs as sent (preprocess=False) and the library checks them:
# Gradio's own checks quote a bad value back whole, a megabyte if sent one.
RAW = {"preprocess": False}
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


def upload_path(payload: object, folders: Sequence[Path]) -> Path | None:
    """The uploaded file's real path from an image input that Gradio did not preprocess.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a broken file
    would fail inside Gradio with a generic error, and EXIF, 16-bit and CMYK handling would
    be Gradio's rather than the library's. The upload handlers therefore run with
    ``preprocess=False``, and then Gradio checks the path only of a payload marked as a
    file: an unmarked ``{"path": ...}`` arrives as sent. So the path is checked here, for
    every payload, against the folders the app owns (:func:`webapp.files.uploaded_file`),
    and :func:`issp.data.load_image` applies the library's rules (the size limit read
    from the header first) and messages. The other inputs arrive as sent and
    :mod:`webapp` validates them.
    """
    path = payload.get("path") if isinstance(payload, dict) else payload
    return files.uploaded_file(path, folders)


def shown_to_user(fn: Callable) -> Callable:
    """Turn the library's user-facing errors into ``gr.Error`` so the UI and API show them,
    without the server's paths (:func:`webapp.checks.user_message`).

    Generator functions stay generator functions, because Gradio streams only those.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args):
            try:
                yield from fn(*args)
            except IsspError as err:
                raise gr.Error(user_message(str(err)), print_exception=False) from err

        return streaming

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except IsspError as err:
            raise gr.Error(user_message(str(err)), print_exception=False) from err

    return wrapper


def shown(progress: gr.Progress) -> Callable[[float, str], None]:
    """The library's progress callback (:data:`issp.upscale.Progress`) drawing Gradio's
    progress bar, so the library never imports Gradio."""
    return lambda fraction, text: progress(fraction, desc=text)


@dataclass(frozen=True)
class Server:
    """What one server's handlers work with."""

    zoo: ModelZoo
    limits: upscaling.Limits
    results_path: Path | None
    examples: list[Path]
    outputs: files.ResultFolders
    telemetry_dir: Path
    runs: LiveRuns
    # Where Gradio writes uploads (and copies the examples to), and the examples' own
    # folder: the only places an image input may name.
    uploads: list[Path]
    study_path: Path | None  # the paired-seed study's study.json

    def stop_live(self, request: gr.Request) -> None:
        """Stop this session's live run or sweep; it ends at its next step."""
        self.runs.stop(request.session_hash)


def figure_tabs(prefix: str) -> list[gr.Plot]:
    """Lay out one plot per figure of ``FIGURES`` in ``FIGURE_TABS``; returns them in
    ``FIGURES`` order, the order :mod:`webapp.live` returns figures in."""
    plots = {}
    with gr.Tabs():
        for title, names in FIGURE_TABS.items():
            with gr.Tab(title):
                for name in names:
                    # Labelled for view_api, where it names the return value.
                    plots[name] = gr.Plot(
                        label=name.replace("_", " "), show_label=False, elem_id=f"{prefix}-{name}"
                    )
    return [plots[name] for name in FIGURES]


def upscale_tab(server: Server, demo: gr.Blocks) -> None:
    """The Upscale tab: an image, the model pickers, and Upscale / Evaluate."""

    @shown_to_user
    @memory.trimmed
    def upscale(
        image: dict | None,
        scale: int,
        ratio: float,
        method: str,
        arch: str = DEFAULT_ARCH,
        output_format: str = upscaling.DEFAULT_FORMAT,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio asks for progress)
    ) -> tuple[str, tuple[str, str], str]:
        """Upscale an image; returns the full-size result in ``output_format``, a
        (bicubic, model) pair of PNGs and a summary."""
        path = upload_path(image, server.uploads)
        folder = server.outputs.new()
        result = upscaling.upscale(
            server.zoo,
            path,
            scale,
            ratio,
            method,
            arch,
            server.limits,
            folder,
            output_format,
            shown(progress),
        )
        previews = (str(result.bicubic_preview), str(result.model_preview))
        return str(result.download), previews, result.summary

    @shown_to_user
    @memory.trimmed
    def evaluate(
        image: dict | None,
        scale: int,
        ratio: float,
        arch: str = DEFAULT_ARCH,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio asks for progress)
    ) -> tuple[pd.DataFrame, Figure, str]:
        """Score bicubic, dense, ISS-P and IHT with the upload as ground truth."""
        path = upload_path(image, server.uploads)
        result = upscaling.evaluate(
            server.zoo, path, scale, ratio, arch, server.limits, shown(progress)
        )
        table = pd.DataFrame(result.rows, columns=list(upscaling.EVALUATE_COLUMNS))
        return table, result.figure, result.note

    def model_options(scale: int, arch: str, method: str, ratio: float) -> tuple:
        """The architectures on offer at this scale and the ratio the slider snaps to."""
        offered = model_choice.model_options(server.zoo.manifest(), scale, arch, method, ratio)
        ratio_update = gr.update() if offered.ratio is None else gr.update(value=offered.ratio)
        return gr.update(choices=offered.archs, value=offered.arch), ratio_update, offered.note

    initial = model_choice.model_options(server.zoo.manifest(), 2, DEFAULT_ARCH, label("issp"), 0.9)
    with gr.Tab("Upscale"), gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                label="Image (PNG, JPEG, WebP, TIFF, BMP; alpha is kept)",
                type="filepath",
                image_mode=None,
                sources=["upload", "clipboard"],
                height=320,
                elem_id="input-image",
            )
            gr.Examples([[str(p)] for p in server.examples], inputs=[image], label="Examples")
            gr.Markdown(
                "These models learned clean bicubic downscaling: on a JPEG photo they sharpen "
                "its compression noise too, so a PNG source upscales best."
            )
            scale = gr.Radio(SCALE_CHOICES, value=2, label="Scale", elem_id="scale")
            arch = gr.Dropdown(
                initial.archs,
                value=initial.arch or DEFAULT_ARCH,
                label="Architecture",
                # Checkpoints can appear while the server runs; the backend checks.
                allow_custom_value=True,
            )
            method = gr.Radio([label(m) for m in COMPARED], value=label("issp"), label="Method")
            ratio = gr.Slider(
                0.0,
                0.99,
                value=initial.ratio if initial.ratio is not None else 0.9,
                step=0.01,
                label="Pruning ratio (fraction of zero weights; 0 = dense)",
                elem_id="ratio",
            )
            note = gr.Markdown(initial.note, label="model in use", elem_id="ratio-note")
            output_format = gr.Radio(
                [(fmt.label, name) for name, fmt in upscaling.OUTPUT_FORMATS.items()],
                value=upscaling.DEFAULT_FORMAT,
                label="Download format",
                elem_id="output-format",
            )
            with gr.Row():
                upscale_button = gr.Button("Upscale", variant="primary", elem_id="run")
                evaluate_button = gr.Button("Evaluate on this image")
        with gr.Column(scale=2):
            compare = gr.ImageSlider(
                label="bicubic | model", type="filepath", max_height=600, elem_id="compare"
            )
            download = gr.File(label="Full-size result", elem_id="download")
            summary = gr.Markdown(label="summary", elem_id="summary")
            eval_note = gr.Markdown(label="evaluation")
            eval_table = gr.Dataframe(
                headers=list(upscaling.EVALUATE_COLUMNS), label="PSNR / SSIM (Y channel)"
            )
            eval_plot = gr.Plot(label="PSNR against pruning ratio")

    picks, pickers = [scale, arch, method, ratio], [arch, ratio, note]
    scale.input(model_options, picks, pickers, api_name="options", **RAW)
    # The other triggers run the same function, already public as "options".
    for trigger in (arch.input, method.input, ratio.release, demo.load):
        trigger(model_options, picks, pickers, api_visibility="private", **RAW)
    upscale_button.click(
        upscale,
        [image, scale, ratio, method, arch, output_format],
        [download, compare, summary],
        api_name="upscale",
        **RAW,
        **COMPUTE,
    )
    evaluate_button.click(
        evaluate,
        [image, scale, ratio, arch],
        [eval_table, eval_plot, eval_note],
        api_name="evaluate",
        **RAW,
        **COMPUTE,
    )


def results_tab(server: Server, demo: gr.Blocks) -> None:
    """The Results tab: the paired-seed study, then the zoo's stored table, its
    provenance, the manifest and a PSNR chart."""

    @shown_to_user
    def results(x_axis: str, test_set: str) -> tuple[str, str, pd.DataFrame, Figure]:
        """The stored results table, its provenance, the manifest and a PSNR chart."""
        manifest = server.zoo.manifest()
        table = results_text(server.results_path) or "*No results table written yet.*"
        rows = pd.DataFrame(manifest_rows(manifest), columns=MANIFEST_COLUMNS)
        figure = results_figure(manifest, x_axis, test_set)
        return table, provenance(manifest, server.results_path), rows, figure

    @shown_to_user
    def study(metric: str | None) -> tuple[str, Figure | None, gr.Dropdown]:
        """The paired-seed study's verdicts and figure for ``metric``, and its metrics."""
        page = study_page(server.study_path, metric)
        return page.text, page.figure, gr.Dropdown(choices=page.choices, value=page.metric)

    with gr.Tab("Results"):
        gr.Markdown("### Does ISS-P beat IHT? The paired-seed study")
        study_metric = gr.Dropdown(choices=[], value=None, label="Study test set")
        study_text = gr.Markdown(label="study verdicts")
        study_plot = gr.Plot(label="Study PSNR and paired ISS-P − IHT per seed")
        gr.Markdown("### The checkpoint zoo")
        with gr.Row():
            x_axis = gr.Radio(
                [("pruning ratio", "ratio"), ("non-zero weights", "nonzeros")],
                value="ratio",
                label="x axis",
            )
            test_set = gr.Radio(list(SCORE_KEYS), value=SCORE_KEYS[0], label="Test set")
        results_plot = gr.Plot(label="Stored PSNR")
        results_table = gr.Markdown(label="results table")
        provenance_text = gr.Markdown(label="provenance")
        manifest_table = gr.Dataframe(label="Checkpoints (manifest)")

    shown = [results_table, provenance_text, manifest_table, results_plot]
    demo.load(results, [x_axis, test_set], shown, api_name="results", **RAW)
    for trigger in (x_axis.input, test_set.input):
        trigger(results, [x_axis, test_set], shown, api_visibility="private", **RAW)
    study_shown = [study_text, study_plot, study_metric]
    demo.load(study, [study_metric], study_shown, api_name="study", **RAW)
    study_metric.input(study, [study_metric], study_shown, api_visibility="private", **RAW)


@dataclass(frozen=True)
class RunControls:
    """The settings a live run and an alpha sweep share (alpha only the live run's)."""

    arch: gr.Dropdown
    scale: gr.Radio
    ratio: gr.Slider
    alpha: gr.Slider | None
    steps: gr.Number
    kp: gr.Number
    seed: gr.Number

    def inputs(self) -> list:
        """The controls in their endpoints' argument order."""
        alpha = [] if self.alpha is None else [self.alpha]
        return [self.arch, self.scale, self.ratio, *alpha, self.steps, self.kp, self.seed]


def run_controls(steps: int, steps_label: str, prefix: str, alpha: bool) -> RunControls:
    """Lay out a run's settings, defaulting to ``LockstepConfig``'s."""
    defaults = LockstepConfig()
    arch = gr.Dropdown(list(live.LIVE_ARCHS), value=defaults.arch, label="Architecture")
    scale = gr.Radio(SCALE_CHOICES, value=defaults.scale, label="Scale")
    ratio = gr.Slider(0.0, 0.99, value=defaults.ratio, step=0.01, label="Pruning ratio")
    shrink = None
    if alpha:
        shrink = gr.Slider(
            0.01, 0.999, value=defaults.alpha, step=0.001, label="ISS-P alpha (shrink factor)"
        )
    count = gr.Number(value=steps, precision=0, label=steps_label, elem_id=f"{prefix}-steps")
    share = defaults.train_config().kp_fraction  # the live protocol's, as the run uses it
    kp = gr.Number(value=0, precision=0, label=f"Pruning stage Kp (steps; 0 = {share:.0%} of them)")
    seed = gr.Number(value=defaults.seed, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
    return RunControls(arch, scale, ratio, shrink, count, kp, seed)


def live_tab(server: Server) -> None:
    """The Live comparison tab: ISS-P and IHT (and the extras) trained in lockstep."""

    @shown_to_user
    def train_live(
        arch: str,
        scale: int,
        ratio: float,
        alpha: float,
        steps: int,
        prune_steps: int | None,
        seed: int,
        extra: list[str],
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Train ISS-P and IHT (and the extras) in lockstep, streaming figures and status."""
        config = live.live_config(arch, scale, ratio, alpha, steps, prune_steps, seed, extra)
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
                f"At most {MAX_STEPS:,} steps. {TRAINING_LINE}"
            )
            controls = run_controls(LockstepConfig.steps, "Steps", "live", alpha=True)
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
        live.sweep_alphas(alphas, config.steps)
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
                f"At most {MAX_STEPS:,} steps in all. {TRAINING_LINE}"
            )
            controls = run_controls(SWEEP_STEPS, "Steps per alpha", "sweep", alpha=False)
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
        view = stored_runs.stored_view(server.telemetry_dir, choice)
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


def build_app(
    zoo: ModelZoo,
    limits: upscaling.Limits,
    results_path: Path | None,
    examples: list[Path],
    outputs: files.ResultFolders,
    telemetry_dir: Path = TELEMETRY_DIR,
    study_path: Path | None = None,
) -> gr.Blocks:
    """Lay out the app, one tab at a time, each wired to its :mod:`webapp` functions."""
    runs = LiveRuns(capacity=TRAINING_RUNS, slots=TRAINING_SLOTS)
    uploads = [Path(get_upload_folder()), *{path.parent for path in examples}]
    server = Server(
        zoo, limits, results_path, examples, outputs, telemetry_dir, runs, uploads, study_path
    )

    def zoo_status() -> str:
        """What in the model zoo cannot be used and why; '' when all of it can."""
        status = zoo.status()
        return f"**Model zoo:** {user_message(status)}" if status else ""

    with gr.Blocks(title="ISS-P sparse super-resolution", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Sparse super-resolution: ISS-P vs IHT\n"
            "Networks pruned with Iterative Soft Shrinkage (ISS-P, ICCV 2023) or Iterative "
            "Hard Thresholding (IHT) to a chosen fraction of zero weights. "
            f"{limits.describe()}"
        )
        # Empty unless part of the zoo cannot be used; re-checked on every page load.
        zoo_note = gr.Markdown(zoo_status(), elem_id="zoo-status")
        demo.load(zoo_status, None, zoo_note, api_visibility="private")
        upscale_tab(server, demo)
        results_tab(server, demo)
        live_tab(server)
        sweep_tab(server)
        stored_tab(server)
    return demo


def create_demo(work: Path) -> gr.Blocks:
    """The app as this server serves it, its files in the server folder ``work``."""
    zoo_dir = zoo_folder()
    # analysis/results.md, telemetry/ and study.json describe the default zoo only; another
    # zoo may carry its own.
    default_zoo = zoo_dir.resolve() == ZOO_DIR.resolve()
    return build_app(
        ModelZoo(zoo_dir, capacity=MODEL_CACHE),
        LIMITS,
        RESULTS if default_zoo else zoo_dir / "results.md",
        files.make_examples(work / "examples"),
        files.ResultFolders(work / "results"),
        TELEMETRY_DIR if default_zoo else zoo_dir / "telemetry",
        STUDY_JSON if default_zoo else zoo_dir / "study.json",
    )


def serve(work: Path) -> None:
    """Serve the app from the server folder ``work`` until interrupted, keeping its files
    under the disk bound."""
    global demo
    demo = create_demo(work)
    # The examples Gradio copied into its cache are needed as long as the page is.
    examples = {
        path for block in demo.blocks.values() for path in getattr(block, "keep_in_cache", ())
    }
    disk_bytes = int(os.environ.get("ISSP_DISK_MB", DISK_MB)) * 2**20
    # Results first: they have been sent. Gradio's folder holds the uploads and its cache.
    # A client's share of it per hour; 1 turns the share off (see webapp.files.UploadGate
    # for who counts as one client behind a proxy).
    share = float(os.environ.get("ISSP_CLIENT_SHARE", CLIENT_SHARE))
    budget = files.DiskBudget(
        [work / "results", work / "gradio"], disk_bytes, examples, client_share=share
    )
    stop = threading.Event()
    chores = (stop, PRUNE_SECONDS, budget, demo.temp_file_sets)
    threading.Thread(target=files.housekeeping, args=chores, daemon=True).start()

    @contextlib.asynccontextmanager
    async def lifespan(_app: object) -> AsyncIterator[None]:
        yield
        # Runs before Gradio's own cleanup at shutdown, which a folder in its sets fails.
        files.forget_directories(demo.temp_file_sets)

    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    gate = Middleware(files.UploadGate, budget=budget)
    try:
        demo.launch(
            max_file_size=f"{LIMITS.max_upload_mb}mb",
            app_kwargs={"middleware": [gate], "lifespan": lifespan},
        )
    finally:
        stop.set()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start the server; blocks until interrupted (Ctrl-C or SIGTERM)."""
    # SIGTERM (a Space restarting, a test finishing) then closes the server like Ctrl-C
    # does, and the work folder below is removed instead of left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    memory.limit_arenas()  # before Gradio starts its threads (webapp.memory)
    upscaling.configure_threads(CONCURRENCY)
    # GRADIO_TEMP_DIR, if set, says where the work folder goes. Gradio's cache then lives
    # inside it, so it holds this server's files only: pruning it touches nobody else's,
    # and a server killed with kill -9 leaves it to the next one to remove.
    root = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "issp-app"
    with files.work_folder(root) as work:
        os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
        serve(work)


if __name__ == "__main__":
    if gr.NO_RELOAD:
        main()
    else:
        # `gradio app.py` runs this file again, in a thread of the running server, when a
        # source file changes: only the layout is built again, in the server's folder
        # (main put Gradio's folder inside it).
        demo = create_demo(Path(os.environ["GRADIO_TEMP_DIR"]).parent)
