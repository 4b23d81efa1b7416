"""Upscale latency as the web app serves it, before and after ``issp.upscale.inference_model``.

    python -m benchmarks.upscale_latency [--sizes 256 512 1024] [--repeats 3] [--threads 1]
    python -m benchmarks.upscale_latency --tiles           # the sweep behind TILE_OUTPUT
    python -m benchmarks.upscale_latency --quality ../shared/data/test  # PSNR as served

1. End to end, edsr-tiny at x2 and x4, on a photo of each size (a centre crop of the
   first photo bundled with scikit-image that is large enough): decode the PNG, upscale
   with ``issp.upscale.upscale_image``, encode the PNG. ``bicubic`` is Pillow's (the
   floor); ``before`` is the checkpoint as loaded (float32 NCHW) in the app's former 192
   px tiles with Pillow's default PNG level; ``after`` is ``inference_model`` with
   ``fast_tile`` and ``PNG_COMPRESS_LEVEL``, for the dense checkpoint and each ISS-P ratio
   in the manifest. Sizes above 512 px run bicubic and ``after`` dense only, once, to
   keep the default run near four minutes on a busy machine.
2. Sparse against dense per image, 512 px, model and tiles only: the fastest dense path
   (bfloat16 where the CPU has it natively), dense float32 channels-last, and the sparse kernel
   with every pruned conv of the checkpoint in it; the decision per ratio.
3. Threads: ``after`` at 512 px, dense x2, with the app's threads per request against all
   usable cores.

The machine is shared with other jobs: the variants take turns within every repeat, every
figure is a median over repeats, and the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.sparse_conv import median_ms
from issp.catalogue import load_manifest, load_zoo_model
from issp.data import default_image_paths, load_image
from issp.evaluate import evaluate_folder
from issp.machine import available_cpus, machine_description, use_huge_pages
from issp.sparse import sparsify
from issp.upscale import (
    PNG_COMPRESS_LEVEL,
    TILE_OUTPUT,
    InferenceModel,
    bf16_available,
    fast_tile,
    inference_model,
    upscale_image,
    upscale_tensor,
)

ARCH = "edsr-tiny"
METHOD = "issp"
SCALES = (2, 4)
# The app before inference_model: Limits.tile LR px per tile, Pillow's default zlib level.
BEFORE_TILE = 192
BEFORE_PNG_LEVEL = 6
# Sizes above this run dense only, once.
LARGE = 512
# Output px per tile side tried by --tiles; None is the whole image.
TILE_SWEEP = (192, 256, 384, 512, 768, None)


def photo(size: int, folder: Path) -> Path:
    """A ``size`` px square centre crop of the first bundled photo that large, as PNG."""
    for source in default_image_paths():
        img = load_image(source).convert("RGB")
        if min(img.size) >= size:
            left, top = (img.width - size) // 2, (img.height - size) // 2
            path = folder / f"photo_{size}.png"
            img.crop((left, top, left + size, top + size)).save(path)
            return path
    raise SystemExit(f"no bundled photo is {size} px on each side")


def serve(
    model: nn.Module | None, path: Path, scale: int, tile: int, level: int, out: Path
) -> Callable[[], None]:
    """One request as the app serves it: decode, upscale in tiles, encode the PNG."""

    def run() -> None:
        sr = upscale_image(model, load_image(path), scale, tile=tile)
        sr.save(out, compress_level=level)

    return run


def zoo_models() -> tuple[dict[tuple[int, float], nn.Module], list[float]]:
    """The edsr-tiny checkpoints by (scale, ratio), dense as ratio 0, and the ISS-P ratios
    the manifest has at every scale."""
    records = load_manifest().checkpoints
    by_scale = [
        {r.ratio for r in records if (r.arch, r.scale, r.method) == (ARCH, s, METHOD)}
        for s in SCALES
    ]
    ratio_list = sorted(set.intersection(*by_scale))
    models = {}
    for scale in SCALES:
        for ratio in [0.0, *ratio_list]:
            method = "dense" if ratio == 0 else METHOD
            models[scale, ratio] = load_zoo_model(ARCH, scale, method, ratio)[0].eval()
    return models, ratio_list


def end_to_end(
    models: dict[tuple[int, float], nn.Module],
    sizes: list[int],
    ratio_list: list[float],
    repeats: int,
    folder: Path,
) -> dict[tuple[int, int], dict[str, float]]:
    """Table 1; returns its figures in ms by (size, scale) and column."""
    print("\n1. End to end (decode, tiles, model, encode); median seconds of", repeats)
    print(f"   before: float32 NCHW, {BEFORE_TILE} px tiles, PNG level {BEFORE_PNG_LEVEL};")
    print(f"   after: inference_model, fast_tile, PNG level {PNG_COMPRESS_LEVEL};")
    print(f"   sizes above {LARGE} px: bicubic and after dense only, one run")
    columns = ["bicubic", "before", "dense", *(f"r{r:g}" for r in ratio_list)]
    print(f"{'input':>6s} {'scale':>5s} {'tile':>4s} " + " ".join(f"{c:>7s}" for c in columns))
    results = {}
    for size in sizes:
        path = photo(size, folder)
        for scale in SCALES:
            out, tile = folder / "out.png", fast_tile(scale)
            raw = models[scale, 0.0]
            large = size > LARGE
            fns = {"bicubic": serve(None, path, scale, tile, PNG_COMPRESS_LEVEL, out)}
            if not large:
                fns["before"] = serve(raw, path, scale, BEFORE_TILE, BEFORE_PNG_LEVEL, out)
            for ratio in [0.0] if large else [0.0, *ratio_list]:
                model = inference_model(models[scale, ratio])
                name = "dense" if ratio == 0 else f"r{ratio:g}"
                fns[name] = serve(model, path, scale, tile, PNG_COMPRESS_LEVEL, out)
            times = median_ms(fns, 1 if large else repeats, warmup=False)
            results[size, scale] = times
            cells = " ".join(
                f"{times[c] / 1e3:7.2f}" if c in times else f"{'-':>7s}" for c in columns
            )
            print(f"{size:6d} {'x' + str(scale):>5s} {tile:4d} {cells}")
    return results


def sparse_against_dense(
    models: dict[tuple[int, float], nn.Module], ratio_list: list[float], repeats: int
) -> None:
    """Table 2 and the decision: whole-image model time, fastest dense against sparse."""
    fastest = "dense bf16" if bf16_available() else "dense fp32"
    print(
        f"\n2. Sparse against dense: {ARCH}, 512 px, model and tiles only; median ms of {repeats}"
    )
    print(f"   {fastest} is the fastest dense path here; max |diff| = sparse vs dense float32")
    print(
        f"{'scale':>5s} {'ratio':>5s} {'dense bf16':>10s} {'dense fp32':>10s} {'sparse':>8s} "
        f"{'fastest/sparse':>14s} {'fp32/sparse':>11s} {'max |diff|':>10s}  inference_model"
    )
    x = torch.rand(1, 3, 512, 512)
    for scale in SCALES:
        tile = fast_tile(scale)
        dense = models[scale, 0.0]
        fns = {"dense fp32": inference_model(dense, bf16=False)}
        if bf16_available():
            fns["dense bf16"] = inference_model(dense)
        diffs = {}
        for ratio in ratio_list:
            # min_sparsity=ratio: every pruned conv in the kernel, whatever MIN_SPARSITY says.
            sparse = sparsify(models[scale, ratio], min_sparsity=ratio)
            fns[f"r{ratio:g}"] = InferenceModel(sparse, "sparse", False, False)
            with torch.inference_mode():
                crop = x[..., :96, :96]
                diffs[ratio] = (sparse(crop) - models[scale, ratio](crop)).abs().max().item()
        calls = {k: lambda m=m, s=scale, t=tile: upscale_tensor(m, x, s, t) for k, m in fns.items()}
        # No warm-up call: the median of the repeats already leaves out a cold first one.
        times = median_ms(calls, repeats, warmup=False)
        best = min(times.get("dense bf16", float("inf")), times["dense fp32"])
        for ratio in ratio_list:
            served = inference_model(models[scale, ratio]).describe()
            sparse_ms = times[f"r{ratio:g}"]
            fp32 = times["dense fp32"]
            bf16 = f"{times['dense bf16']:10.0f}" if "dense bf16" in times else f"{'-':>10s}"
            speedups = f"{best / sparse_ms:13.2f}x {fp32 / sparse_ms:10.2f}x"
            print(
                f"{'x' + str(scale):>5s} {ratio:5g} {bf16} {fp32:10.0f} {sparse_ms:8.0f} "
                f"{speedups} {diffs[ratio]:10.1e}  {served}"
            )


def threads_table(
    models: dict[tuple[int, float], nn.Module], app_threads: int, repeats: int, folder: Path
) -> None:
    """Table 3: the x2 after path at 512 px with the app's threads against every core."""
    counts = sorted({app_threads, available_cpus()})
    print(f"\n3. Threads: after, dense x2, 512 px end to end; median seconds of {repeats}")
    model = inference_model(models[2, 0.0])
    run = serve(model, photo(512, folder), 2, fast_tile(2), PNG_COMPRESS_LEVEL, folder / "out.png")

    def with_threads(n: int) -> Callable[[], None]:
        def call() -> None:
            torch.set_num_threads(n)
            try:
                run()
            finally:
                torch.set_num_threads(app_threads)

        return call

    times = median_ms({n: with_threads(n) for n in counts}, repeats, warmup=False)
    print("   " + ", ".join(f"{n} thread(s): {times[n] / 1e3:.2f} s" for n in counts))


def tile_sweep(
    models: dict[tuple[int, float], nn.Module], ratio_list: list[float], repeats: int
) -> None:
    """Model time of a 512 px input per tile size, for each path inference_model can pick."""
    print(f"\nTiles: {ARCH}, 512 px, model only, 16 px overlap; median ms of {repeats};")
    print(f"   output px per tile side (TILE_OUTPUT is {TILE_OUTPUT}), whole = no tiles")
    x = torch.rand(1, 3, 512, 512)
    top = max(ratio_list)
    for scale in SCALES:
        paths = [
            inference_model(models[scale, 0.0]),
            inference_model(models[scale, 0.0], bf16=False),
            inference_model(models[scale, top], bf16=False),
        ]
        for model in paths:
            fns = {
                side: lambda m=model, s=scale, t=side and side // scale: upscale_tensor(m, x, s, t)
                for side in TILE_SWEEP
            }
            times = median_ms(fns, repeats, warmup=False)
            cells = " ".join(f"{side or 'whole'}: {ms:.0f}" for side, ms in times.items())
            print(f"  x{scale} {model.path}: {cells}")


def quality(data: Path) -> None:
    """Set5/Set14 PSNR of every edsr-tiny checkpoint in float32 and as inference_model runs it."""
    if not bf16_available():
        print("\nQuality: no native bfloat16 on this CPU, so inference_model never uses it")
        return
    print(f"\nQuality: PSNR (dB, Y) of every {ARCH} checkpoint, float32 -> inference_model")
    worst = 0.0
    for record in load_manifest().checkpoints:
        if record.arch != ARCH:
            continue
        model = load_zoo_model(ARCH, record.scale, record.method, record.ratio)[0].eval()
        fast, tile = inference_model(model), fast_tile(record.scale)
        for test_set in ("Set5", "Set14"):
            fp32 = evaluate_folder(model, data / test_set, record.scale, tile=tile)["psnr"]
            served = evaluate_folder(fast, data / test_set, record.scale, tile=tile)["psnr"]
            worst = max(worst, abs(served - fp32))
            print(
                f"  {record.file} {test_set}: {fp32:.4f} -> {served:.4f} "
                f"({served - fp32:+.4f}; {fast.path})"
            )
    print(f"largest |change|: {worst:.4f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, available_cpus() // 2),
        help="threads per request; the app runs two requests at once on the usable cores",
    )
    parser.add_argument("--tiles", action="store_true", help="only the tile-size sweep")
    parser.add_argument(
        "--quality",
        type=Path,
        metavar="DIR",
        help="only the PSNR of float32 against inference_model on DIR/Set5 and DIR/Set14",
    )
    args = parser.parse_args()
    use_huge_pages()  # as the app and the CLI run

    torch.set_num_threads(args.threads)
    print(
        f"machine: {machine_description()}; {torch.get_num_threads()} torch thread(s) per request"
    )
    print(f"native bfloat16 (AMX or AVX-512 BF16): {bf16_available()}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.quality:
        quality(args.quality)
    elif args.tiles:
        tile_sweep(*zoo_models(), args.repeats)
    else:
        models, ratio_list = zoo_models()
        with tempfile.TemporaryDirectory() as tmp:
            results = end_to_end(models, args.sizes, ratio_list, args.repeats, Path(tmp))
            sparse_against_dense(models, ratio_list, args.repeats)
            threads_table(models, args.threads, args.repeats, Path(tmp))
        if (512, 2) in results:
            print("\nGoal, 512 px as the app serves it (after, dense):")
            for scale, goal in ((2, 1.0), (4, 1.5)):
                took = results[512, scale]["dense"] / 1e3
                verdict = "met" if took < goal else "not met"
                print(f"  x{scale}: {took:.2f} s against {goal} s: {verdict}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
