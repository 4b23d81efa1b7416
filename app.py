"""Web app: upscale with a sparse SR network from the zoo, score it, browse results, and
watch ISS-P and IHT prune side by side (live, as an alpha sweep, or from stored runs).

``python app.py`` serves it (host and port from ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``, as on a Hugging Face Space). ``ISSP_ZOO_DIR`` points it at another
checkpoint folder (default ``checkpoints/``); ``ISSP_DISK_MB`` bounds the disk its files
take (default ``DISK_MB``). The layout lives here; the work is done by
:mod:`issp.service` and :mod:`analysis.live`, which the tests call without a UI.
"""

import functools
import inspect
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# Before gradio is imported: it reads this at import time, and a Space must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from plotly.graph_objects import Figure  # noqa: E402

from analysis import live  # noqa: E402
from analysis.lockstep import MAX_STEPS, LockstepConfig  # noqa: E402
from analysis.plots import FIGURES  # noqa: E402
from issp import IsspError, service  # noqa: E402
from issp.zoo import RESULTS, TELEMETRY_DIR, ZOO_DIR  # noqa: E402

# Two requests at a time fits the two-core machines the app is meant for; more queue up,
# and past QUEUE_SIZE waiting requests a new one is told the queue is full at once.
CONCURRENCY = 2
QUEUE_SIZE = 32
# One "Evaluate" sweep touches a dense model and 2 methods x 5 ratios: 11 models fit.
MODEL_CACHE = 16
# Results and Gradio's cache (uploads, and the files sent back: about 0.6 MB for a small
# upscale, 42 MB for a 1 MP x4 one) are kept under DISK_MB (ISSP_DISK_MB overrides it),
# oldest files deleted first, checked every PRUNE_SECONDS; Gradio's delete_cache also
# removes each file after an hour. Under sustained load that is what bounds the disk.
DISK_MB = 1024
PRUNE_SECONDS = 10
# Live training runs and alpha sweeps run one at a time server-wide, so training takes one
# core at most and upscaling keeps the other. They wait in a line of their own (see
# live.LiveRuns), not in Gradio's queue: at most TRAINING_RUNS running or waiting, one
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


def upload_path(payload: object, folders: Sequence[Path]) -> Path | None:
    """The uploaded file's real path from an image input that Gradio did not preprocess.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a broken file
    would fail inside Gradio with a generic error, and EXIF, 16-bit and CMYK handling would
    be Gradio's rather than the library's. The upload handlers therefore run with
    ``preprocess=False``, and then Gradio checks the path only of a payload marked as a
    file: an unmarked ``{"path": ...}`` arrives as sent. So the path is checked here, for
    every payload, against the folders the app owns (:func:`issp.service.uploaded_file`),
    and :func:`issp.data.load_image` applies the library's rules (the size limit read
    from the header first) and messages. The other inputs arrive as sent and
    :mod:`issp.service` validates them.
    """
    path = payload.get("path") if isinstance(payload, dict) else payload
    return service.uploaded_file(path, folders)


def shown_to_user(fn: Callable) -> Callable:
    """Turn the library's user-facing errors into ``gr.Error`` so the UI and API show them,
    without the server's paths (:func:`issp.service.user_message`).

    Generator functions stay generator functions, because Gradio streams only those.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args):
            try:
                yield from fn(*args)
            except IsspError as err:
                raise gr.Error(service.user_message(str(err)), print_exception=False) from err

        return streaming

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except IsspError as err:
            raise gr.Error(service.user_message(str(err)), print_exception=False) from err

    return wrapper


def figure_tabs(prefix: str) -> list[gr.Plot]:
    """Lay out one plot per figure of ``FIGURES`` in ``FIGURE_TABS``; returns them in
    ``FIGURES`` order, the order :mod:`analysis.live` returns figures in."""
    plots = {}
    with gr.Tabs():
        for title, names in FIGURE_TABS.items():
            with gr.Tab(title):
                for name in names:
                    plots[name] = gr.Plot(show_label=False, elem_id=f"{prefix}-{name}")
    return [plots[name] for name in FIGURES]


def build_app(
    zoo: service.ModelZoo,
    limits: service.Limits,
    results_path: Path | None,
    examples: list[Path],
    outputs: service.ResultFolders,
    telemetry_dir: Path = TELEMETRY_DIR,
) -> gr.Blocks:
    """Lay out the app and wire each widget to an :mod:`issp.service` or
    :mod:`analysis.live` function."""
    runs = live.LiveRuns(capacity=TRAINING_RUNS, slots=TRAINING_SLOTS)
    # Where Gradio writes uploads (and copies the examples to), and the examples' own
    # folder: the only places an image input may name.
    uploads = [Path(get_upload_folder()), *{path.parent for path in examples}]

    @shown_to_user
    def upscale(
        image: dict | None,
        scale: int,
        ratio: float,
        method: str,
        arch: str = service.DEFAULT_ARCH,
    ) -> tuple[str, tuple[str, str], str]:
        """Upscale an image; returns the full-size PNG, a (bicubic, model) pair, a summary."""
        folder = outputs.new()
        result = service.upscale(
            zoo, upload_path(image, uploads), scale, ratio, method, arch, limits, folder
        )
        previews = (str(result.bicubic_preview), str(result.model_preview))
        return str(result.png), previews, result.summary

    @shown_to_user
    def evaluate(
        image: dict | None, scale: int, ratio: float, arch: str = service.DEFAULT_ARCH
    ) -> tuple[pd.DataFrame, Figure, str]:
        """Score bicubic, dense, ISS-P and IHT with the upload as ground truth."""
        path = upload_path(image, uploads)
        result = service.evaluate(zoo, path, scale, ratio, arch, limits)
        table = pd.DataFrame(result.rows, columns=list(service.EVALUATE_COLUMNS))
        return table, result.figure, result.note

    @shown_to_user
    def results(x_axis: str, test_set: str) -> tuple[str, str, pd.DataFrame, Figure]:
        """The stored results table, its provenance, the manifest and a PSNR chart."""
        manifest = zoo.manifest()
        table = service.results_text(results_path) or "*No results table written yet.*"
        rows = pd.DataFrame(service.manifest_rows(manifest), columns=service.MANIFEST_COLUMNS)
        figure = service.results_figure(manifest, x_axis, test_set)
        return table, service.provenance(manifest, results_path), rows, figure

    def model_options(scale: int, arch: str, method: str, ratio: float) -> tuple:
        """The architectures on offer at this scale and the ratio the slider snaps to."""
        options = service.model_options(zoo.manifest(), scale, arch, method, ratio)
        ratio_update = gr.update() if options.ratio is None else gr.update(value=options.ratio)
        return gr.update(choices=options.archs, value=options.arch), ratio_update, options.note

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
        with runs.admitted(request.session_hash) as run:
            for status in runs.wait(run):
                yield *(None,) * len(FIGURES), status, None
            for view in live.live_run(config, run.stop, outputs.new):
                download = None if view.download is None else str(view.download)
                yield *view.figures, view.status, download

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
        with runs.admitted(request.session_hash) as run:
            for status in runs.wait(run):
                yield None, None, status
            for view in live.sweep_run(config, alphas, run.stop):
                table = pd.DataFrame(view.rows, columns=list(live.SWEEP_COLUMNS))
                # float32 PSNR printed in full reads as noise.
                table = table.round({"psnr": 2})
                yield table, view.figure, view.status

    def stop_live(request: gr.Request) -> None:
        """Stop this session's live run or sweep; it ends at its next step."""
        runs.stop(request.session_hash)

    @shown_to_user
    def stored(choice: str | None) -> tuple:
        """The stored ISS-P / IHT dynamics of one setting, with its summary."""
        view = live.stored_view(telemetry_dir, choice)
        return *view.figures, view.status

    def stored_settings(choice: str | None) -> tuple:
        """Refresh the stored settings on offer (the zoo build adds them) and draw one."""
        choices = live.stored_choices(telemetry_dir)
        if choice not in choices:
            choice = next(iter(choices), None)
        return gr.update(choices=choices, value=choice), *stored(choice)

    def zoo_status() -> str:
        """What in the model zoo cannot be used and why; '' when all of it can."""
        status = zoo.status()
        return f"**Model zoo:** {service.user_message(status)}" if status else ""

    initial = service.model_options(zoo.manifest(), 2, service.DEFAULT_ARCH, "ISS-P", 0.9)

    with gr.Blocks(title="ISS-P sparse super-resolution", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Sparse super-resolution: ISS-P vs IHT\n"
            "Networks pruned with Iterative Soft Shrinkage (ISS-P, ICCV 2023) or Iterative "
            "Hard Thresholding (IHT) to a chosen fraction of zero weights. "
            f"{limits.describe()}"
        )
        # Empty unless part of the zoo cannot be used; re-checked on every page load.
        zoo_note = gr.Markdown(zoo_status(), elem_id="zoo-status")
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
                gr.Examples([[str(p)] for p in examples], inputs=[image], label="Examples")
                scale = gr.Radio([("x2", 2), ("x4", 4)], value=2, label="Scale")
                arch = gr.Dropdown(
                    initial.archs,
                    value=initial.arch or service.DEFAULT_ARCH,
                    label="Architecture",
                    # Checkpoints can appear while the server runs; the service checks.
                    allow_custom_value=True,
                )
                method = gr.Radio(list(service.METHODS), value="ISS-P", label="Method")
                ratio = gr.Slider(
                    0.0,
                    0.99,
                    value=initial.ratio if initial.ratio is not None else 0.9,
                    step=0.01,
                    label="Pruning ratio (fraction of zero weights; 0 = dense)",
                    elem_id="ratio",
                )
                note = gr.Markdown(initial.note, label="model in use", elem_id="ratio-note")
                with gr.Row():
                    upscale_button = gr.Button("Upscale", variant="primary", elem_id="run")
                    evaluate_button = gr.Button("Evaluate on this image")
            with gr.Column(scale=2):
                compare = gr.ImageSlider(
                    label="bicubic | model", type="filepath", max_height=600, elem_id="compare"
                )
                download = gr.File(label="Full-size PNG", elem_id="download")
                summary = gr.Markdown(label="summary", elem_id="summary")
                eval_note = gr.Markdown(label="evaluation")
                eval_table = gr.Dataframe(
                    headers=list(service.EVALUATE_COLUMNS), label="PSNR / SSIM (Y channel)"
                )
                eval_plot = gr.Plot(label="PSNR against pruning ratio")
        with gr.Tab("Results"):
            with gr.Row():
                x_axis = gr.Radio(
                    [("pruning ratio", "ratio"), ("non-zero weights", "nonzeros")],
                    value="ratio",
                    label="x axis",
                )
                test_set = gr.Radio(list(service.TEST_SETS), value="set5", label="Test set")
            results_plot = gr.Plot(label="Stored PSNR")
            results_table = gr.Markdown(label="results table")
            provenance = gr.Markdown(label="provenance")
            manifest_table = gr.Dataframe(label="Checkpoints (manifest)")
        with gr.Tab("Live comparison"), gr.Row():
            with gr.Column(scale=1, min_width=280):
                gr.Markdown(
                    "ISS-P and IHT train side by side from the same initial weights on the "
                    "same batches, so the pruning rule is the only difference. "
                    f"At most {MAX_STEPS:,} steps. {TRAINING_LINE}"
                )
                live_arch = gr.Dropdown(
                    list(live.LIVE_ARCHS), value="edsr-tiny", label="Architecture"
                )
                live_scale = gr.Radio([("x2", 2), ("x4", 4)], value=2, label="Scale")
                live_ratio = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="Pruning ratio")
                live_alpha = gr.Slider(
                    0.01, 0.999, value=0.99, step=0.001, label="ISS-P alpha (shrink factor)"
                )
                live_steps = gr.Number(
                    value=LockstepConfig.steps, precision=0, label="Steps", elem_id="live-steps"
                )
                live_kp = gr.Number(
                    value=0, precision=0, label="Pruning stage Kp (steps; 0 = 60% of them)"
                )
                live_seed = gr.Number(
                    value=0, precision=0, minimum=0, maximum=live.MAX_SEED, label="Seed"
                )
                live_extra = gr.CheckboxGroup(list(live.EXTRA_METHODS), label="Also train")
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary", elem_id="live-train")
                    live_stop = gr.Button("Stop", variant="stop", elem_id="live-stop")
            with gr.Column(scale=3):
                live_status = gr.Markdown(
                    "Press Train to start.", label="status", elem_id="live-status"
                )
                live_download = gr.File(label="Run data (JSON)", elem_id="live-download")
                live_plots = figure_tabs("live")
        with gr.Tab("Alpha sweep"), gr.Row():
            with gr.Column(scale=1, min_width=280):
                gr.Markdown(
                    "The same small ISS-P run once per alpha, from alpha 0 (which is IHT) "
                    "towards 1: how much the mask moves, and what it costs or gains in PSNR. "
                    f"At most {MAX_STEPS:,} steps in all. {TRAINING_LINE}"
                )
                sweep_arch = gr.Dropdown(
                    list(live.LIVE_ARCHS), value="edsr-tiny", label="Architecture"
                )
                sweep_scale = gr.Radio([("x2", 2), ("x4", 4)], value=2, label="Scale")
                sweep_ratio = gr.Slider(0.0, 0.99, value=0.9, step=0.01, label="Pruning ratio")
                sweep_steps = gr.Number(value=150, precision=0, label="Steps per alpha")
                sweep_kp = gr.Number(
                    value=0, precision=0, label="Pruning stage Kp (steps; 0 = 60% of them)"
                )
                sweep_seed = gr.Number(
                    value=0, precision=0, minimum=0, maximum=live.MAX_SEED, label="Seed"
                )
                sweep_alphas = gr.CheckboxGroup(
                    [(live.alpha_name(a), a) for a in live.SWEEP_ALPHAS],
                    value=[0.0, 0.5, 0.9, 0.99],
                    label="Alphas",
                )
                with gr.Row():
                    sweep_button = gr.Button("Run sweep", variant="primary")
                    sweep_stop = gr.Button("Stop", variant="stop")
            with gr.Column(scale=3):
                sweep_status = gr.Markdown("Press Run sweep to start.", label="status")
                sweep_plot = gr.Plot(label="flips and PSNR against alpha")
                sweep_table = gr.Dataframe(headers=list(live.SWEEP_COLUMNS), label="Runs")
        with gr.Tab("Stored dynamics") as stored_tab:
            gr.Markdown(
                "The full-length runs the zoo was trained with: the same figures, no training."
            )
            with gr.Row():
                # Listed now, so an API client sees them (view_api) and may pick one before
                # its session has opened the tab; the zoo build may add more later, which
                # live.stored_view finds, as it checks against the folder, not this list.
                settings = live.stored_choices(telemetry_dir)
                stored_choice = gr.Dropdown(
                    settings,
                    value=next(iter(settings), None),
                    label="Setting (ISS-P and IHT both stored)",
                )
                stored_refresh = gr.Button("Refresh", scale=0)
            stored_status = gr.Markdown(label="summary", elem_id="stored-status")
            stored_plots = figure_tabs("stored")

        # Every handler takes its inputs as sent (preprocess=False) and the library checks
        # them: Gradio's own checks quote a bad value back whole, a megabyte if sent one.
        raw = {"preprocess": False}
        picks = [scale, arch, method, ratio]
        pickers = [arch, ratio, note]
        scale.input(model_options, picks, pickers, api_name="options", **raw)
        # The other triggers run the same function, already public as "options".
        arch.input(model_options, picks, pickers, api_visibility="private", **raw)
        method.input(model_options, picks, pickers, api_visibility="private", **raw)
        ratio.release(model_options, picks, pickers, api_visibility="private", **raw)
        demo.load(model_options, picks, pickers, api_visibility="private", **raw)
        demo.load(zoo_status, None, zoo_note, api_visibility="private")
        upscale_button.click(
            upscale,
            [image, scale, ratio, method, arch],
            [download, compare, summary],
            api_name="upscale",
            **raw,
        )
        evaluate_button.click(
            evaluate,
            [image, scale, ratio, arch],
            [eval_table, eval_plot, eval_note],
            api_name="evaluate",
            **raw,
        )
        results_outputs = [results_table, provenance, manifest_table, results_plot]
        tables = [x_axis, test_set]
        demo.load(results, tables, results_outputs, api_name="results", **raw)
        x_axis.input(results, tables, results_outputs, api_visibility="private", **raw)
        test_set.input(results, tables, results_outputs, api_visibility="private", **raw)

        live_inputs = [
            live_arch,
            live_scale,
            live_ratio,
            live_alpha,
            live_steps,
            live_kp,
            live_seed,
            live_extra,
        ]
        training = {
            # Started at once: runs wait in `runs`, whose line is bounded, and so a second
            # Train press or Stop reaches a waiting run at once.
            "concurrency_limit": None,
            # The plots stay readable while they update.
            "show_progress": "minimal",
            # A second press submits its run while the first is still winding down.
            "trigger_mode": "multiple",
            **raw,
        }
        train_button.click(
            train_live,
            live_inputs,
            [*live_plots, live_status, live_download],
            api_name="train_live",
            **training,
        )
        live_stop.click(stop_live, None, None, api_name="stop_live", concurrency_limit=None)
        sweep_inputs = [
            sweep_arch,
            sweep_scale,
            sweep_ratio,
            sweep_steps,
            sweep_kp,
            sweep_seed,
            sweep_alphas,
        ]
        sweep_button.click(
            sweep,
            sweep_inputs,
            [sweep_table, sweep_plot, sweep_status],
            api_name="alpha_sweep",
            **training,
        )
        sweep_stop.click(stop_live, None, None, api_visibility="private", concurrency_limit=None)

        stored_outputs = [*stored_plots, stored_status]
        stored_refresh.click(
            stored_settings,
            [stored_choice],
            [stored_choice, *stored_outputs],
            api_name="stored_settings",
            **raw,
        )
        # Drawn when the tab is opened, not on every page load: stored runs are long.
        stored_tab.select(
            stored_settings,
            [stored_choice],
            [stored_choice, *stored_outputs],
            api_visibility="private",
            **raw,
        )
        stored_choice.input(stored, [stored_choice], stored_outputs, api_name="stored", **raw)
    return demo


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start the server; blocks until interrupted (Ctrl-C or SIGTERM)."""
    # SIGTERM (a Space restarting, a test finishing) then closes the server like Ctrl-C
    # does, and the work folder below is removed instead of left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    limits = service.Limits()
    service.configure_threads(CONCURRENCY)
    zoo_dir = Path(os.environ.get("ISSP_ZOO_DIR", ZOO_DIR))
    # analysis/results.md and analysis/telemetry/ describe the default zoo only; another
    # zoo may carry its own.
    default_zoo = zoo_dir.resolve() == ZOO_DIR.resolve()
    results_path = RESULTS if default_zoo else zoo_dir / "results.md"
    telemetry_dir = TELEMETRY_DIR if default_zoo else zoo_dir / "telemetry"
    disk_bytes = int(os.environ.get("ISSP_DISK_MB", DISK_MB)) * 2**20
    # GRADIO_TEMP_DIR, if set, says where the work folder goes. Gradio's cache then lives
    # inside it, so it holds this server's files only: pruning it touches nobody else's,
    # and a server killed with kill -9 leaves it to the next one to remove.
    root = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "issp-app"
    with service.work_folder(root) as work:
        os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
        results = work / "results"
        demo = build_app(
            service.ModelZoo(zoo_dir, capacity=MODEL_CACHE),
            limits,
            results_path,
            service.make_examples(work / "examples"),
            service.ResultFolders(results),
            telemetry_dir,
        )
        # The examples Gradio copied into its cache are needed as long as the page is.
        examples = {
            path for block in demo.blocks.values() for path in getattr(block, "keep_in_cache", ())
        }
        stop = threading.Event()
        pruner = threading.Thread(
            target=service.prune_until,
            args=(stop, PRUNE_SECONDS, [work / "gradio", results], disk_bytes, examples),
            daemon=True,
        )
        pruner.start()
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
        try:
            demo.launch(max_file_size=f"{limits.max_upload_mb}mb")
        finally:
            stop.set()


if __name__ == "__main__":
    main()
