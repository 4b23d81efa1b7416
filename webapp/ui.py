"""What every tab of ``app.py``'s layout shares: the server's state its handlers work with,
how a handler's inputs arrive and its errors reach the user, and the dynamics figures'
sub-tabs.

The ``ui_*`` modules lay out one tab each and wire its widgets to the plain functions of
:mod:`webapp`; only they and this module import Gradio.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from analysis.plots import FIGURES
from issp import IsspError
from webapp import files, upscaling
from webapp.admission import LiveRuns
from webapp.checks import user_message
from webapp.model_zoo import ModelZoo

# Every handler takes its inputs as sent (preprocess=False) and the library checks them:
# Gradio's own checks quote a bad value back whole, a megabyte if sent one.
RAW = {"preprocess": False}
SCALE_CHOICES = [("x2", 2), ("x4", 4)]
# The dynamics figures grouped into sub-tabs: a browser redraws only the visible ones, and
# all eight redrawn at every live update kept a busy machine's browser from responding.
FIGURE_TABS = {
    "Loss and PSNR": ("loss",),
    "Mask flips": ("flips", "flips_heatmap"),
    "Gradient flow": ("grad_norm", "grad_spread"),
    "Weights": ("sparsity", "magnitude", "weights"),
}


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
    # The event settings of Upscale and Evaluate: the one queue they share (app.COMPUTE).
    compute: Mapping[str, object]

    def stop_live(self, request: gr.Request) -> None:
        """Stop this session's live run or sweep; it ends at its next step."""
        self.runs.stop(request.session_hash)


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


def progress_callback(progress: gr.Progress) -> Callable[[float, str], None]:
    """The library's progress callback (:data:`issp.upscale.Progress`) drawing Gradio's
    progress bar, so the library never imports Gradio."""
    return lambda fraction, text: progress(fraction, desc=text)


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
