"""Process memory while upscaling images of ever new sizes: what the allocator and
oneDNN's primitive cache keep.

    python -m benchmarks.shape_memory [--images 500] [--ratio 0.5] [--trim]
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=64 python -m benchmarks.shape_memory --trim

Upscales ``--images`` random-noise images of random sizes (48-199 px a side) x2 with the
zoo's edsr-tiny checkpoint at ``--ratio`` through ``issp.upscale.inference_model`` (the
app's path; a dense-enough checkpoint runs through oneDNN), on one thread, and prints the
process's RSS (Linux ``/proc``) every 50 images. ``--trim`` calls
``webapp.memory.release_free_memory`` after each image, as the app does after each
upscale. ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` in the environment bounds oneDNN's cache of
compiled primitives, one set per input shape (1024 by default).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from benchmarks.soak import rss_mib
from issp.catalogue import load_zoo_model
from issp.machine import machine_description
from issp.upscale import inference_model, upscale_array
from webapp.memory import release_free_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--ratio", type=float, default=0.5, help="the checkpoint's ratio")
    parser.add_argument("--trim", action="store_true", help="malloc_trim after each image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_zoo_model("edsr-tiny", 2, "issp", args.ratio)
    fast = inference_model(model)
    capacity = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "default (1024)")
    print(f"machine: {machine_description()}; path: {fast.path}; primitive cache {capacity}")
    rng = np.random.default_rng(0)
    samples = []
    for image in range(1, args.images + 1):
        height, width = rng.integers(48, 200, 2)
        upscale_array(fast, rng.integers(0, 256, (height, width, 3), dtype=np.uint8), 2)
        if args.trim:
            release_free_memory()
        if image % 50 == 0:
            samples.append(f"{rss_mib(os.getpid()):.0f}")
    print(f"RSS every 50 images (MiB): {', '.join(samples)}")


if __name__ == "__main__":
    main()
