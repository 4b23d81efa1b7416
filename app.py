"""Web app: upscale an image with a sparse SR network from the zoo, score it, browse results.

``python app.py`` serves it (host and port from ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``, as on a Hugging Face Space). ``ISSP_ZOO_DIR`` points it at another
checkpoint folder (default ``checkpoints/``). The layout lives here; the work is done by
:mod:`issp.service`, which the tests call without a UI.
"""

import functools
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

# Before gradio is imported: it reads this at import time, and a Space must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from plotly.graph_objects import Figure  # noqa: E402

from issp import IsspError, service  # noqa: E402
from issp.zoo import RESULTS, ZOO_DIR  # noqa: E402

# Two requests at a time fits the two-core machines the app is meant for; more queue up,
# and past QUEUE_SIZE waiting requests a new one is told the queue is full at once.
CONCURRENCY = 2
QUEUE_SIZE = 32
# One "Evaluate" sweep touches a dense model and 2 methods x 5 ratios: 11 models fit.
MODEL_CACHE = 16


def upload_path(payload: dict | None) -> str | None:
    """The uploaded file's path from an image input that Gradio did not preprocess.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a broken file
    would fail inside Gradio with a generic error, and EXIF, 16-bit and CMYK handling would
    be Gradio's rather than the library's. The upload handlers therefore run with
    ``preprocess=False``: Gradio still moves the file into its cache and checks the path,
    then :func:`issp.data.load_image` applies the library's rules (the size limit read
    from the header first) and messages. The other inputs arrive as sent and
    :mod:`issp.service` validates them.
    """
    return payload.get("path") if payload else None


def shown_to_user(fn: Callable) -> Callable:
    """Turn the library's user-facing errors into ``gr.Error`` so the UI and API show them."""

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except IsspError as err:
            raise gr.Error(str(err), print_exception=False) from err

    return wrapper


def build_app(
    zoo: service.ModelZoo,
    limits: service.Limits,
    results_path: Path | None,
    examples: list[Path],
    outputs: service.ResultFolders,
) -> gr.Blocks:
    """Lay out the app and wire each widget to an :mod:`issp.service` function."""

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
            zoo, upload_path(image), scale, ratio, method, arch, limits, folder
        )
        previews = (str(result.bicubic_preview), str(result.model_preview))
        return str(result.png), previews, result.summary

    @shown_to_user
    def evaluate(
        image: dict | None, scale: int, ratio: float, arch: str = service.DEFAULT_ARCH
    ) -> tuple[pd.DataFrame, Figure, str]:
        """Score bicubic, dense, ISS-P and IHT with the upload as ground truth."""
        result = service.evaluate(zoo, upload_path(image), scale, ratio, arch, limits)
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

    initial = service.model_options(zoo.manifest(), 2, service.DEFAULT_ARCH, "ISS-P", 0.9)

    with gr.Blocks(title="ISS-P sparse super-resolution", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Sparse super-resolution: ISS-P vs IHT\n"
            "Networks pruned with Iterative Soft Shrinkage (ISS-P, ICCV 2023) or Iterative "
            "Hard Thresholding (IHT) to a chosen fraction of zero weights. "
            f"{limits.describe()}"
        )
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

        picks = [scale, arch, method, ratio]
        pickers = [arch, ratio, note]
        scale.input(model_options, picks, pickers, api_name="options")
        # The other triggers run the same function, already public as "options".
        arch.input(model_options, picks, pickers, api_visibility="private")
        method.input(model_options, picks, pickers, api_visibility="private")
        ratio.release(model_options, picks, pickers, api_visibility="private")
        demo.load(model_options, picks, pickers, api_visibility="private")
        upscale_button.click(
            upscale,
            [image, scale, ratio, method, arch],
            [download, compare, summary],
            api_name="upscale",
            preprocess=False,
        )
        evaluate_button.click(
            evaluate,
            [image, scale, ratio, arch],
            [eval_table, eval_plot, eval_note],
            api_name="evaluate",
            preprocess=False,
        )
        results_outputs = [results_table, provenance, manifest_table, results_plot]
        demo.load(results, [x_axis, test_set], results_outputs, api_name="results")
        x_axis.input(results, [x_axis, test_set], results_outputs, api_visibility="private")
        test_set.input(results, [x_axis, test_set], results_outputs, api_visibility="private")
    return demo


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Start the server; blocks until interrupted (Ctrl-C or SIGTERM)."""
    # SIGTERM (a Space restarting, a test finishing) then closes the server like Ctrl-C
    # does, and the temporary folder below is removed instead of left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    limits = service.Limits()
    service.configure_threads(CONCURRENCY)
    zoo_dir = Path(os.environ.get("ISSP_ZOO_DIR", ZOO_DIR))
    # analysis/results.md describes the default zoo only; another zoo may carry its own.
    results_path = RESULTS if zoo_dir.resolve() == ZOO_DIR.resolve() else zoo_dir / "results.md"
    with tempfile.TemporaryDirectory(prefix="issp-app-") as work:
        demo = build_app(
            service.ModelZoo(zoo_dir, capacity=MODEL_CACHE),
            limits,
            results_path,
            service.make_examples(Path(work) / "examples"),
            service.ResultFolders(Path(work) / "results"),
        )
        demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
        demo.launch(max_file_size=f"{limits.max_upload_mb}mb")


if __name__ == "__main__":
    main()
