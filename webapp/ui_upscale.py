"""The Upscale tab: an image, the model pickers, and Upscale / Evaluate, wired to
:mod:`webapp.upscaling` and :mod:`webapp.model_choice`."""

from __future__ import annotations

import gradio as gr
import pandas as pd
from plotly.graph_objects import Figure

from issp.methods import COMPARED, label
from webapp import memory, model_choice, upscaling
from webapp.model_choice import DEFAULT_ARCH
from webapp.ui import RAW, SCALE_CHOICES, Server, progress_callback, shown_to_user, upload_path

# Where the ratio slider starts, before the zoo says which ratios it has.
START_RATIO = 0.9


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
            progress_callback(progress),
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
            server.zoo, path, scale, ratio, arch, server.limits, progress_callback(progress)
        )
        table = pd.DataFrame(result.rows, columns=list(upscaling.EVALUATE_COLUMNS))
        return table, result.figure, result.note

    def model_options(scale: int, arch: str, method: str, ratio: float) -> tuple:
        """The architectures on offer at this scale and the ratio the slider snaps to."""
        offered = model_choice.model_options(server.zoo.manifest(), scale, arch, method, ratio)
        ratio_update = gr.update() if offered.ratio is None else gr.update(value=offered.ratio)
        return gr.update(choices=offered.archs, value=offered.arch), ratio_update, offered.note

    manifest = server.zoo.manifest()
    initial = model_choice.model_options(manifest, 2, DEFAULT_ARCH, label("issp"), START_RATIO)
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
                value=initial.ratio if initial.ratio is not None else START_RATIO,
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
        **server.compute,
    )
    evaluate_button.click(
        evaluate,
        [image, scale, ratio, arch],
        [eval_table, eval_plot, eval_note],
        api_name="evaluate",
        **RAW,
        **server.compute,
    )
