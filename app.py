"""Web app: upscale with a sparse SR network from the zoo, score it, browse results, and
watch ISS-P and IHT prune side by side (live, as an alpha sweep, or from stored runs).

``python app.py`` serves it (host and port from ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT``, as on a Hugging Face Space); ``gradio app.py`` serves it in
reload mode. ``ISSP_ZOO_DIR`` points it at another checkpoint folder (default
``checkpoints/``: :func:`issp.catalogue.zoo_folder`); ``ISSP_DISK_MB`` bounds the disk
its files take (default ``DISK_MB``).
Here the server is set up and its tabs put together; each tab is laid out by a
``webapp.ui_*`` module, and the work is done by :mod:`webapp`'s plain functions, which the
tests call without a UI.
"""

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

# Before gradio is imported: it reads this at import time, and a Space must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Before torch is imported: oneDNN reads it once. Every new image size adds compiled
# primitives to a cache of 1,024 by default, which a server sees no end of (webapp.memory,
# which imports nothing heavy).
from webapp.memory import PRIMITIVE_CACHE  # noqa: E402

os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE))

from issp.machine import use_huge_pages  # noqa: E402

use_huge_pages()  # before the first large tensor, when torch reads it

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from issp.catalogue import (  # noqa: E402
    TELEMETRY_DIR,
    is_checkout_zoo,
    results_file,
    telemetry_folder,
    zoo_folder,
)
from webapp import files, memory, upscaling  # noqa: E402
from webapp.admission import LiveRuns  # noqa: E402
from webapp.checks import user_message  # noqa: E402
from webapp.model_zoo import ModelZoo  # noqa: E402
from webapp.study_view import STUDY_JSON  # noqa: E402
from webapp.ui import Server  # noqa: E402
from webapp.ui_dynamics import live_tab, stored_tab, sweep_tab  # noqa: E402
from webapp.ui_results import results_tab  # noqa: E402
from webapp.ui_upscale import upscale_tab  # noqa: E402

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
LIMITS = upscaling.Limits()


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
    server = Server(
        zoo=zoo,
        limits=limits,
        results_path=results_path,
        examples=examples,
        outputs=outputs,
        telemetry_dir=telemetry_dir,
        runs=LiveRuns(capacity=TRAINING_RUNS, slots=TRAINING_SLOTS),
        uploads=[Path(get_upload_folder()), *{path.parent for path in examples}],
        study_path=study_path,
        compute=COMPUTE,
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
    # The checkout's study.json describes its own zoo only; another zoo may carry its own.
    study = STUDY_JSON if is_checkout_zoo(zoo_dir) else zoo_dir / "study.json"
    return build_app(
        ModelZoo(zoo_dir, capacity=MODEL_CACHE),
        LIMITS,
        results_file(zoo_dir),
        files.make_examples(work / "examples"),
        files.ResultFolders(work / "results"),
        telemetry_folder(zoo_dir),
        study,
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
            # Gradio serves what a handler returns only from its own folder, the working
            # folder or the system's temp folder; a GRADIO_TEMP_DIR elsewhere puts results
            # outside all three. This folder holds nothing but what the app wrote.
            allowed_paths=[str(work / "results")],
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
