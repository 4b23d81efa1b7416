"""Where the time of a pruned edsr-tiny goes, layer by layer, next to what this CPU can do.

    python -m benchmarks.roofline [--scale 2] [--ratios 0.9 0.95 0.99] [--repeats 5] [--swinir]

Per conv of the shipped ISS-P checkpoint at each ratio, on the input that conv sees when
the app upscales one tile (``issp.upscale.fast_tile``; batch 1, one thread): its dense and
sparse FLOPs (a multiply-add is 2), then the milliseconds and GFLOP/s of dense float32
channels-last, dense bfloat16 channels-last (where the CPU has it natively) and the sparse
kernel, each layer alone. GFLOP/s counts the dense FLOPs for the dense paths and the
sparse FLOPs for the kernel: work done per second. The peaks beside them are measured
here too: a large float32 and bfloat16 matmul (compute), a tensor copy (memory
bandwidth). A last column is the floor memory traffic sets (input and output bytes over
the bandwidth). The whole model's time per path closes the table, so the per-layer sums
can be checked against it.

``--swinir`` adds swinir-tiny x2: its pruned Linear layers, dense against torch's CSR
sparse x dense product, on the tokens of one tile, next to the whole model's time.

The machine is shared: the paths take turns within every repeat and each figure is a
median; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.sparse_conv import median_ms, memory_bandwidth, pruned_model
from issp.catalogue import load_zoo_model
from issp.machine import machine_description, use_huge_pages
from issp.sparse import SparseConv2d, SparseWeight, sparse_conv3x3, sparsify
from issp.upscale import bf16_available, fast_tile

RATIOS = (0.9, 0.95, 0.99)


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one ``size`` x ``size`` matmul in ``dtype``: this core's compute peak, as
    near as torch gets to it."""
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    ms = median_ms({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * size**3 / (ms * 1e6)


def conv_inputs(
    model: nn.Module, tile: int, kind: type[nn.Module] = nn.Conv2d
) -> dict[str, torch.Tensor]:
    """Each ``kind`` layer's input (by module name) when ``model`` runs on one ``tile`` px
    tile (its first call, for a layer called more than once)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0]))
        for name, layer in model.named_modules()
        if isinstance(layer, kind)
    ]
    with torch.inference_mode():
        model(torch.rand(1, 3, tile, tile))
    for hook in hooks:
        hook.remove()
    return seen


def layer_times(conv: nn.Conv2d, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds of one conv on ``x`` per path."""
    weight, bias = conv.weight.detach(), conv.bias.detach()
    sparse = SparseWeight.from_dense(weight)
    last = x.contiguous(memory_format=torch.channels_last)
    fns = {
        "fp32": lambda: F.conv2d(last, weight, bias, padding=1),
        "kernel": lambda: sparse_conv3x3(x, sparse, bias),
    }
    if bf16_available():
        wb, bb, xb = weight.bfloat16(), bias.bfloat16(), last.bfloat16()
        fns["bf16"] = lambda: F.conv2d(xb, wb, bb, padding=1)
    return median_ms(fns, repeats)


def model_times(model: nn.Module, tile: int, repeats: int) -> dict[str, float]:
    """Milliseconds of the whole model on one tile, per path."""
    x = torch.rand(1, 3, tile, tile)
    last = model.to(memory_format=torch.channels_last)
    xl = x.contiguous(memory_format=torch.channels_last)
    sparse = sparsify(model, min_sparsity=0.5)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return last(xl)

    fns = {"fp32": lambda: last(xl), "kernel": lambda: sparse(x)}
    if bf16_available():
        fns["bf16"] = bf16
    return median_ms(fns, repeats)


def table(scale: int, ratio: float, repeats: int, peaks: dict[str, float]) -> None:
    model, source = pruned_model(scale, ratio)
    model.eval()
    tile = fast_tile(scale)
    print(f"\n{source}: one {tile} px tile, x{scale}")
    paths = ["fp32", "bf16", "kernel"] if bf16_available() else ["fp32", "kernel"]
    print(
        f"{'layer':14s} {'in':>12s} {'zeros':>6s} {'dense MF':>9s} {'sparse MF':>9s} "
        + " ".join(f"{p + ' ms':>10s} {'GF/s':>6s}" for p in paths)
        + f" {'mem ms':>7s}"
    )
    inputs = conv_inputs(model, tile)
    total = dict.fromkeys(paths, 0.0)
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        x = inputs[name].clone()
        _, cin, h, w = x.shape
        pixels = h * w
        nonzeros = int(torch.count_nonzero(conv.weight))
        dense_mf = 2 * conv.weight.numel() * pixels / 1e6
        sparse_mf = 2 * nonzeros * pixels / 1e6
        times = layer_times(conv, x, repeats)
        cells = []
        for path in paths:
            work = sparse_mf if path == "kernel" else dense_mf
            cells.append(f"{times[path]:10.2f} {work / times[path]:6.1f}")
            total[path] += times[path]
        memory_ms = 1e3 * 4 * pixels * (cin + conv.out_channels) / peaks["bandwidth"]
        zeros = 1 - nonzeros / conv.weight.numel()
        print(
            f"{name:14s} {f'{cin}x{h}x{w}':>12s} {zeros:6.3f} {dense_mf:9.1f} {sparse_mf:9.1f} "
            + " ".join(cells)
            + f" {memory_ms:7.2f}"
        )
    whole = model_times(model, tile, repeats)
    print(
        f"{'sum of layers':14s} {'':>12s} {'':>6s} {'':>9s} {'':>9s} "
        + " ".join(f"{total[p]:10.2f} {'':>6s}" for p in paths)
    )
    print(
        f"{'whole model':14s} {'':>12s} {'':>6s} {'':>9s} {'':>9s} "
        + " ".join(f"{whole[p]:10.2f} {'':>6s}" for p in paths)
    )
    kernel_convs = sum(isinstance(m, SparseConv2d) for m in sparsify(model, 0.5).modules())
    print(f"(whole model: the kernel runs {kernel_convs} convs; its other ops are torch's)")


def linear_times(linear: nn.Linear, tokens: torch.Tensor, repeats: int) -> dict[str, float]:
    """Milliseconds of one Linear layer on ``tokens``: dense, and its weight as torch CSR."""
    weight, bias = linear.weight.detach(), linear.bias.detach()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.to_sparse_csr()
        return median_ms(
            {
                "dense": lambda: F.linear(tokens, weight, bias),
                "csr": lambda: torch.addmm(bias[:, None], csr, tokens.T).T,
            },
            repeats,
        )


def swinir_table(ratio: float, repeats: int) -> None:
    """swinir-tiny x2: its pruned Linear layers dense against torch's CSR sparse x dense
    product, on the tokens of one tile, next to the whole model's time."""
    model = load_zoo_model("swinir-tiny", 2, "issp", ratio)[0].eval()
    tile = fast_tile(2)
    x = torch.rand(1, 3, tile, tile)
    whole = median_ms({"model": lambda: model(x)}, repeats)["model"]
    inputs = conv_inputs(model, tile, nn.Linear)
    totals = {"dense": 0.0, "csr": 0.0}
    for name, linear in model.named_modules():
        if isinstance(linear, nn.Linear):
            times = linear_times(linear, inputs[name].reshape(-1, linear.in_features), repeats)
            for path in totals:
                totals[path] += times[path]
    layers = sum(isinstance(m, nn.Linear) for m in model.modules())
    print(
        f"\nswinir-tiny x2 ISS-P {ratio:g}, one {tile} px tile: whole model {whole:.1f} ms; its "
        f"{layers} Linear layers {totals['dense']:.1f} ms dense, {totals['csr']:.1f} ms as "
        "torch CSR sparse x dense products"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, default=2, choices=(2, 4))
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--swinir", action="store_true", help="also swinir-tiny's Linear layers, dense vs CSR"
    )
    args = parser.parse_args()
    use_huge_pages()  # as the app and the CLI run
    torch.set_num_threads(1)
    print(f"machine: {machine_description()}; 1 torch thread")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    peaks = {"fp32": matmul_gflops(torch.float32), "bandwidth": memory_bandwidth()}
    line = f"peaks: float32 matmul {peaks['fp32']:.0f} GFLOP/s"
    if bf16_available():
        line += f", bfloat16 matmul {matmul_gflops(torch.bfloat16):.0f} GFLOP/s"
    print(f"{line}, memory {peaks['bandwidth'] / 1e9:.1f} GB/s (copy, read + write)")
    for ratio in args.ratios:
        table(args.scale, ratio, args.repeats, peaks)
    if args.swinir:
        for ratio in args.ratios:
            swinir_table(ratio, args.repeats)
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
