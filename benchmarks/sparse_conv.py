"""Can unstructured-sparse edsr-tiny checkpoints run faster than dense on this CPU?

    python -m benchmarks.sparse_conv [--ratios 0.9 0.95 0.99] [--repeats 3] [--all-paths]

1. Per layer, on a 512x512 LR input (batch 1, fp32), with the weights of the shipped
   ISS-P checkpoints at ratios 0.9, 0.95 and 0.99 (a dense checkpoint magnitude-pruned
   where none is shipped): dense ``F.conv2d``; ``torch.sparse`` CSR (im2col by
   ``F.unfold`` times the CSR weight); a pure-torch direct sparse conv (one axpy of a
   shifted input channel per non-zero); the compiled kernel of ``issp.sparse``; and the
   physical limit, the bytes the layer must touch over the memory bandwidth measured here.
   The two slow pure-torch paths run on the body conv only unless ``--all-paths``.
2. Per image: the whole edsr-tiny x2 and x4 forward, dense against ``issp.sparse.sparsify``
   (the kernel substituted for every pruned conv).
3. One decision per ratio.

The machine is shared with other jobs: every figure is a median over repeats in which the
methods take turns, and the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from issp.catalogue import ZOO_DIR, ZooEntry
from issp.checkpoint import load_checkpoint
from issp.machine import machine_description
from issp.prunable import prunable_weights
from issp.selection import smallest_mask
from issp.sparse import SparseWeight, sparse_conv3x3, sparsify

RATIOS = (0.9, 0.95, 0.99)
ARCH = "edsr-tiny"
ConvFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """A pruned conv of edsr-tiny; ``zoom`` is its input size over the LR input's."""

    label: str
    scale: int
    module: str
    zoom: int


# The body convs all share one shape, and x4's first upsampler conv has x2's shape.
LAYERS = (
    Layer("body conv 32->32", 2, "body.0.conv1", 1),
    Layer("x2 upsampler 32->128", 2, "upsample.0", 1),
    Layer("x4 2nd upsampler 32->128", 4, "upsample.2", 2),
)


def csr_unfold(weight: torch.Tensor, bias: torch.Tensor | None) -> ConvFn:
    """torch.sparse: im2col (``F.unfold``) times the weight as a (Cout, Cin*9) CSR matrix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()

    def conv(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.stack([csr @ cols for cols in F.unfold(x, 3, padding=1)]).view(n, -1, h, w)
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))

    return conv


def torch_axpy(weight: torch.Tensor, bias: torch.Tensor | None) -> ConvFn:
    """A direct sparse conv in pure torch: per non-zero, ``out[co] += value * shifted x[ci]``.

    Rows are padded to ``W + 2``, so every kernel offset is one contiguous slice of the
    flattened padded channel; the two extra output columns are cut off at the end.
    """
    weight = weight.detach()
    cout = weight.shape[0]
    co, ci, ky, kx = weight.nonzero().unbind(1)
    values = weight[co, ci, ky, kx].tolist()
    start = torch.zeros(cout) if bias is None else bias.detach()

    def conv(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        row = w + 2
        # One spare bottom row keeps the last shifted slice inside its channel.
        padded = F.pad(x, (1, 1, 1, 2)).flatten(2)
        length = h * row
        shifts = (ky * row + kx).tolist()
        out = start.view(1, cout, 1).expand(n, cout, length).clone()
        for b in range(n):
            for c, i, s, v in zip(co.tolist(), ci.tolist(), shifts, values, strict=True):
                out[b, c].add_(padded[b, i, s : s + length], alpha=v)
        return out.view(n, cout, h, row)[..., :w].contiguous()

    return conv


def compiled_kernel(weight: torch.Tensor, bias: torch.Tensor | None) -> ConvFn:
    """The compiled direct sparse conv of ``issp.sparse``."""
    sparse = SparseWeight.from_dense(weight)
    return lambda x: sparse_conv3x3(x, sparse, bias)


# Sparse paths by column label in table 1.
SPARSE_PATHS: dict[str, Callable[[torch.Tensor, torch.Tensor | None], ConvFn]] = {
    "csr": csr_unfold,
    "axpy": torch_axpy,
    "kernel": compiled_kernel,
}


def median_ms(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True
) -> dict[str, float]:
    """Median milliseconds per call of each function, after one warm-up call each.

    The functions take turns within every repeat, starting one further each time, so a
    burst of load from other processes hits all of them alike.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for fn in fns.values() if warmup else ():
            fn()
        for repeat in range(repeats):
            for k in range(len(names)):
                name = names[(repeat + k) % len(names)]
                start = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def memory_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes per second a tensor copy moves (read + write), on buffers larger than caches."""
    source, target = torch.ones(nbytes // 4), torch.empty(nbytes // 4)
    ms = median_ms({"copy": lambda: target.copy_(source)}, repeats)["copy"]
    return 2 * nbytes / (ms / 1e3)


def pruned_model(scale: int, ratio: float) -> tuple[nn.Module, str]:
    """The shipped ISS-P edsr-tiny checkpoint at ``ratio``, else the dense one magnitude-pruned
    to ``ratio``; with a line saying which."""
    path = ZOO_DIR / ZooEntry(ARCH, scale, "issp", ratio).file
    if path.exists():
        return load_checkpoint(path)[0], path.name
    dense = ZooEntry(ARCH, scale, "dense", 0.0).file
    model = load_checkpoint(ZOO_DIR / dense)[0]
    with torch.no_grad():
        for weight in prunable_weights(model).values():
            weight.masked_fill_(smallest_mask(weight, math.ceil(ratio * weight.numel())), 0)
    return model, f"{dense} magnitude-pruned to {ratio}"


def layer_row(
    conv: nn.Conv2d, size: int, bandwidth: float, repeats: int, paths: list[str]
) -> dict[str, float]:
    """Milliseconds of dense and each sparse path on one conv, plus its memory-bound limit."""
    weight, bias = conv.weight.detach(), conv.bias.detach()
    x = torch.rand(1, weight.shape[1], size, size)
    fns = {"dense": lambda: F.conv2d(x, weight, bias, padding=1)}
    for name in paths:
        fn = SPARSE_PATHS[name](weight, bias)
        fns[name] = lambda fn=fn: fn(x)
    row = median_ms(fns, repeats)
    sparse = SparseWeight.from_dense(weight)
    index_bytes = sum(t.nbytes for t in (sparse.rowptr, sparse.channel, sparse.ky, sparse.kx))
    touched = x.nbytes + weight.shape[0] * size * size * 4 + sparse.values.nbytes + index_bytes
    row["limit"] = 1e3 * touched / bandwidth
    row["mb"] = touched / 1e6
    row["nnz"] = sparse.nonzeros
    return row


def layer_table(
    models: dict[tuple[int, float], nn.Module],
    ratios: list[float],
    size: int,
    repeats: int,
    all_paths: bool,
) -> None:
    """Table 1: each of LAYERS at each ratio, dense against every sparse path."""
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (512 MiB tensor copy, read + write): {bandwidth / 1e9:.1f} GB/s")
    print(f"\n1. Per layer: {size}x{size} LR input, batch 1, fp32; median ms of {repeats}")
    print("   csr = im2col x torch.sparse CSR; axpy = pure-torch direct sparse conv;")
    print("   kernel = issp.sparse compiled; limit = MB touched / memory bandwidth;")
    print("   csr and axpy are timed on the body conv only (--all-paths: on every layer)")
    header = f"{'layer':26s} {'ratio':>5s} {'nnz':>6s} {'MB':>5s} {'dense':>7s} "
    header += " ".join(f"{name:>7s}" for name in SPARSE_PATHS)
    print(header + f" {'limit':>6s} {'dense/best':>10s}")
    not_fastest = []
    for ratio in ratios:
        for layer in LAYERS:
            conv = models[layer.scale, ratio].get_submodule(layer.module)
            paths = list(SPARSE_PATHS) if layer == LAYERS[0] or all_paths else ["kernel"]
            row = layer_row(conv, size * layer.zoom, bandwidth, repeats, paths)
            best = min(paths, key=row.__getitem__)
            if best != "kernel":
                not_fastest.append(f"{layer.label} r{ratio}: {best}")
            cells = " ".join(f"{row[p]:7.1f}" if p in row else f"{'-':>7s}" for p in SPARSE_PATHS)
            print(
                f"{layer.label:26s} {ratio:5g} {row['nnz']:6.0f} {row['mb']:5.0f} "
                f"{row['dense']:7.1f} {cells} {row['limit']:6.1f} "
                f"{row['dense'] / row[best]:9.2f}x"
            )
    print(
        "fastest sparse path: kernel in every row"
        if not not_fastest
        else f"fastest sparse path is not the kernel in: {'; '.join(not_fastest)}"
    )


def image_table(
    models: dict[tuple[int, float], nn.Module], ratios: list[float], size: int, repeats: int
) -> dict[float, dict[int, float]]:
    """Table 2: whole forwards, dense against sparsified; dense/sparse by ratio and scale.

    A dense forward costs the same whatever its weights, so one dense baseline per scale
    (the first ratio's checkpoint) takes turns with the sparsified model of every ratio.
    """
    print(f"\n2. Per image: {ARCH} on a {size}x{size} LR input; median ms of {repeats};")
    print(f"   dense = the r{ratios[0]:g} checkpoint through F.conv2d, one baseline per scale;")
    print("   max |diff| = sparse vs dense output of the same checkpoint on a 128x128 crop")
    print(
        f"{'model':14s} {'ratio':>5s} {'dense':>8s} {'sparse':>8s} {'speed-up':>8s} "
        f"{'sparse convs':>12s} {'max |diff|':>10s}"
    )
    x = torch.rand(1, 3, size, size)
    speedups: dict[float, dict[int, float]] = {r: {} for r in ratios}
    for scale in (2, 4):
        # min_sparsity=r: every conv pruned to the checkpoint's ratio, none of the dense ones.
        sparse = {r: sparsify(models[scale, r], min_sparsity=r) for r in ratios}
        # The correctness check on a crop doubles as the warm-up of every model.
        with torch.inference_mode():
            crop = x[..., :128, :128]
            diffs = {r: (models[scale, r](crop) - sparse[r](crop)).abs().max() for r in ratios}
        fns = {"dense": lambda m=models[scale, ratios[0]]: m(x)}
        fns |= {f"r{r}": (lambda m=m: m(x)) for r, m in sparse.items()}
        times = median_ms(fns, repeats, warmup=False)
        convs = sum(isinstance(m, nn.Conv2d) for m in models[scale, ratios[0]].modules())
        for ratio in ratios:
            replaced = convs - sum(isinstance(m, nn.Conv2d) for m in sparse[ratio].modules())
            speedups[ratio][scale] = times["dense"] / times[f"r{ratio}"]
            print(
                f"{ARCH + f' x{scale}':14s} {ratio:5g} {times['dense']:8.1f} "
                f"{times[f'r{ratio}']:8.1f} {speedups[ratio][scale]:7.2f}x "
                f"{f'{replaced} of {convs}':>12s} {diffs[ratio]:10.1e}"
            )
    return speedups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=512, help="LR input height and width")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layer figure")
    parser.add_argument("--image-repeats", type=int, default=3, help="timed whole forwards")
    parser.add_argument(
        "--all-paths", action="store_true", help="time csr and axpy on every layer, not the body's"
    )
    args = parser.parse_args()

    print(f"machine: {machine_description()}, {torch.get_num_threads()} torch threads")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    models = {}
    for scale in (2, 4):
        for ratio in args.ratios:
            models[scale, ratio], source = pruned_model(scale, ratio)
            print(f"  x{scale} r{ratio:g}: {source}")

    layer_table(models, args.ratios, args.size, args.repeats, args.all_paths)
    speedups = image_table(models, args.ratios, args.size, args.image_repeats)

    print("\n3. Decision (whole-image latency, this machine)")
    for ratio, by_scale in speedups.items():
        figures = ", ".join(f"x{s} {v:.2f}x" for s, v in by_scale.items())
        if min(by_scale.values()) > 1:
            verdict = "the sparse kernel beats dense"
        elif max(by_scale.values()) > 1:
            verdict = "the sparse kernel beats dense at some scales only"
        else:
            verdict = "dense stays faster"
        print(f"ratio {ratio:g}: {verdict} (dense/sparse: {figures})")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
