"""Inference with unstructured-sparse 3x3 convolutions that skips the zero weights on CPU.

A pruned conv's weight is kept as its non-zeros grouped by output channel (CSR over
``Cout``; each non-zero has an input channel, a kernel row and column, and a value). The
kernel computes one output row at a time, 64 pixels at once in vector registers: the
bias, plus each non-zero's value times the input row it points at, shifted by its kernel
offset. Each thread keeps the three zero-padded input rows it needs in a small buffer,
and the work is proportional to the non-zeros. A conv followed by a pixel shuffle writes
the shuffled layout directly.

``benchmarks/sparse_conv.py`` measured it against dense ``F.conv2d``, ``torch.sparse``
CSR and a pure-torch version of the same loop on edsr-tiny; only this compiled kernel
beat dense there. ``benchmarks/upscale_latency.py`` measures whole images against the
fastest dense paths: ``issp.upscale.inference_model`` uses the kernel where it wins. The
kernel is plain C compiled on first use with the system C compiler (``$CC`` or ``cc``,
OpenMP) and cached under ``~/.cache/issp``; building takes about a second. Forward only:
``SparseConv2d`` has no gradient.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from issp import IsspError
from issp.machine import cache_folder
from issp.models.edsr import ResBlock

log = logging.getLogger(__name__)

# On whole edsr-tiny images (512 px, 1 thread, 2-core AVX-512 Xeon) the kernel beat dense
# float32 channels-last from 90% zeros at x2 and x4 (1.5x-2.5x at 0.9-0.99) but lost at
# 75% at x2 (0.82x) and at 50% (python -m benchmarks.upscale_latency, table 2).
MIN_SPARSITY = 0.9
# Convs with this few channels in or out (RGB in, RGB out) run in the kernel whenever
# the model does; see sparsify().
RGB_CHANNELS = 3
# Output channels a tap's loaded input row serves at once (the kernel has code for 1-4):
# the dense 32->3 last conv of a x4 tile took 10.9 ms with all 3 against 21.6 one at a
# time (AMD EPYC, one thread, load average 4). A group computes every tap any of its
# channels has, so it is used only while that adds at most GROUP_WASTE multiply-adds on
# zeros: on a pruned layer the channels share few taps.
MAX_GROUP = 4
GROUP_WASTE = 0.25

# The kernel, plain C: compiled on first use with the system compiler (see _kernel).
_SOURCE = (Path(__file__).parent / "sparse_kernel.c").read_text()
# Output pixels the kernel sums in registers at once: 4 AVX-512 or 8 AVX2 vectors.
BLOCK = 64
_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", f"-DBLOCK={BLOCK}")
# Names this kernel's source and flags: timings measured with another are stale.
KERNEL_DIGEST = hashlib.sha256("\0".join((_SOURCE, *_FLAGS)).encode()).hexdigest()[:12]


@functools.cache
def _kernel() -> Callable[..., None]:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise IsspError("sparse inference needs a C compiler with OpenMP (set CC or install gcc)")
    key = hashlib.sha256("\0".join((_SOURCE, compiler, *_FLAGS)).encode()).hexdigest()[:16]
    cache = cache_folder()
    library = cache / f"sparse_conv_{key}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            source, built = Path(tmp) / "sparse_conv.c", Path(tmp) / "sparse_conv.so"
            source.write_text(_SOURCE)
            result = subprocess.run(
                [compiler, *_FLAGS, str(source), "-o", str(built)], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise IsspError(f"building the sparse conv kernel failed: {result.stderr.strip()}")
            # A rename is atomic: concurrent first uses never load a half-written library.
            os.replace(built, library)
    # torch is already loaded, so the library binds to torch's OpenMP runtime (same
    # soname) and the two share one thread pool instead of oversubscribing the cores.
    function = ctypes.CDLL(str(library)).sparse_conv3x3
    pointer, int64 = ctypes.c_void_p, ctypes.c_int64
    function.argtypes = [
        pointer,
        *[int64] * 7,
        *[pointer] * 7,
        ctypes.c_int,
        ctypes.c_int,
        pointer,
        ctypes.c_float,
    ]
    function.restype = ctypes.c_int
    return function


@functools.cache
def kernel_error() -> str | None:
    """Why the kernel cannot run here (no C compiler, no OpenMP, a failed build), in one
    line, or None when it can. Cached: a failed build is logged once and not retried."""
    try:
        _kernel()
    except (IsspError, OSError) as err:
        reason = " ".join(str(err).split())
        log.warning("sparse kernel unavailable, pruned models run dense: %s", reason)
        return reason
    return None


@dataclass(frozen=True)
class SparseWeight:
    """The non-zeros of a ``(Cout, Cin, 3, 3)`` weight, by groups of ``group`` consecutive
    output channels that share one list of taps.

    Group ``gi`` (output channels ``gi * group`` to ``gi * group + group - 1``) owns taps
    ``rowptr[gi]:rowptr[gi + 1]`` of ``channel`` (input channel), ``ky``, ``kx`` (kernel
    row and column), each with ``group`` weights in ``values`` (zero for a channel of the
    group that lacks the tap). A tap's input row is loaded once for the whole group.
    """

    shape: tuple[int, int, int, int]
    rowptr: torch.Tensor
    channel: torch.Tensor
    ky: torch.Tensor
    kx: torch.Tensor
    values: torch.Tensor
    group: int = 1

    def __post_init__(self) -> None:
        # The C kernel reads these through raw pointers: a wrong dtype or stride would be
        # read silently as garbage, so it is refused here.
        if not 1 <= self.group <= MAX_GROUP or self.shape[0] % self.group:
            raise IsspError(f"{self.shape[0]} output channels cannot go in groups of {self.group}")
        taps = self.channel.numel()
        expected = {
            "rowptr": (self.rowptr, torch.int64, self.shape[0] // self.group + 1),
            "channel": (self.channel, torch.int32, taps),
            "ky": (self.ky, torch.int32, taps),
            "kx": (self.kx, torch.int32, taps),
            "values": (self.values, torch.float32, taps * self.group),
        }
        for name, (tensor, dtype, numel) in expected.items():
            if tensor.dtype != dtype or tensor.numel() != numel or not tensor.is_contiguous():
                raise IsspError(f"SparseWeight.{name} must be {numel} contiguous {dtype}")

    @classmethod
    def from_dense(cls, weight: torch.Tensor, group: int | None = None) -> SparseWeight:
        """The non-zeros of a dense float32 3x3 conv weight, in groups of ``group`` output
        channels; None: the largest group that adds at most ``GROUP_WASTE`` work."""
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise IsspError(f"expected a (Cout, Cin, 3, 3) weight, got {tuple(weight.shape)}")
        weight = weight.detach().cpu().float()
        cout = weight.shape[0]
        if group is None:
            group = next(
                g for g in range(MAX_GROUP, 0, -1) if _group_waste(weight, g) <= GROUP_WASTE
            )
        if not 1 <= group <= MAX_GROUP or cout % group:
            raise IsspError(f"{cout} output channels cannot go in groups of {group}")
        grouped = weight.reshape(cout // group, group, -1)
        # nonzero() lists indices in row-major order, so taps come sorted by group.
        gi, flat = grouped.ne(0).any(1).nonzero().unbind(1)
        rowptr = torch.zeros(cout // group + 1, dtype=torch.int64)
        rowptr[1:] = torch.bincount(gi, minlength=cout // group).cumsum(0)
        return cls(
            shape=tuple(weight.shape),
            rowptr=rowptr,
            channel=(flat // 9).to(torch.int32),
            ky=(flat // 3 % 3).to(torch.int32),
            kx=(flat % 3).to(torch.int32),
            values=grouped[gi, :, flat].contiguous(),
            group=group,
        )

    @property
    def nonzeros(self) -> int:
        """How many of the weight's entries are not zero."""
        return int(torch.count_nonzero(self.values))

    @property
    def sparsity(self) -> float:
        """Share of the weight's entries that are zero."""
        return 1.0 - self.nonzeros / torch.Size(self.shape).numel()


def _group_waste(weight: torch.Tensor, group: int) -> float:
    """The share of extra multiply-adds (on zeros) groups of ``group`` channels would do;
    infinite where ``group`` does not divide the channels."""
    cout, nonzeros = weight.shape[0], int(torch.count_nonzero(weight))
    if cout % group:
        return math.inf
    taps = int(weight.reshape(cout // group, group, -1).ne(0).any(1).sum())
    return taps * group / max(nonzeros, 1) - 1


def sparse_conv3x3(
    x: torch.Tensor,
    weight: SparseWeight,
    bias: torch.Tensor | None = None,
    shuffle: int = 1,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """``F.conv2d(x, dense_weight, bias, padding=1)`` for a float32 CPU ``x`` of shape
    ``(N, Cin, H, W)``, computed from the non-zeros only; with ``shuffle`` r, followed by
    ``F.pixel_shuffle(..., r)`` at no extra cost (the kernel writes the shuffled layout).
    Without a shuffle, ``relu`` then ``residual + scale * ...`` are applied as each output
    row is written, instead of as two more passes over the whole output."""
    cout, cin = weight.shape[:2]
    if x.dim() != 4 or x.shape[1] != cin:
        raise IsspError(f"expected input (N, {cin}, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise IsspError(f"sparse conv runs on float32 CPU tensors, got {x.dtype} on {x.device}")
    if shuffle < 1 or cout % (shuffle * shuffle):
        raise IsspError(f"{cout} output channels cannot be pixel-shuffled by {shuffle}")
    if shuffle > 1 and weight.group > 1:
        raise IsspError("a pixel-shuffled sparse conv takes its output channels one at a time")
    x = x.contiguous()
    batch, _, h, w = x.shape
    if residual is not None:
        if shuffle != 1 or residual.shape != (batch, cout, h, w) or residual.dtype != x.dtype:
            raise IsspError(f"the residual must be float32 {(batch, cout, h, w)}, unshuffled")
        residual = residual.contiguous()
    out = torch.empty(batch, cout // shuffle**2, h * shuffle, w * shuffle)
    if bias is not None:
        bias = bias.detach().float().contiguous()
    failed = _kernel()(
        x.data_ptr(),
        batch,
        cin,
        h,
        w,
        cout,
        shuffle,
        weight.group,
        weight.rowptr.data_ptr(),
        weight.channel.data_ptr(),
        weight.ky.data_ptr(),
        weight.kx.data_ptr(),
        weight.values.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads(),
        int(relu),
        None if residual is None else residual.data_ptr(),
        scale,
    )
    if failed:
        raise MemoryError("sparse conv: out of memory for its row buffers")
    return out


class SparseConv2d(nn.Module):
    """A 3x3, stride 1, padding 1 convolution that stores and multiplies only its non-zeros,
    optionally followed by a pixel shuffle by ``shuffle``."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None, shuffle: int = 1) -> None:
        super().__init__()
        self.weight = weight
        self.shuffle = shuffle
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, shuffle: int = 1) -> SparseConv2d:
        """The sparse twin of ``conv`` (then a pixel shuffle by ``shuffle``); IsspError if
        its geometry is not 3x3/stride 1/pad 1."""
        if not is_sparse_compatible(conv):
            raise IsspError(f"only 3x3 convs with stride 1 and padding 1 run sparse, got {conv}")
        weight = SparseWeight.from_dense(conv.weight, group=1 if shuffle > 1 else None)
        return cls(weight, conv.bias, shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_conv3x3(x, self.weight, self.bias, self.shuffle)

    def extra_repr(self) -> str:
        cout, cin = self.weight.shape[:2]
        shuffle = f", shuffle={self.shuffle}" if self.shuffle > 1 else ""
        return f"{cin}, {cout}, kernel_size=(3, 3), sparsity={self.weight.sparsity:.3f}{shuffle}"


class SparseResBlock(nn.Module):
    """EDSR's residual block, ``x + res_scale * conv2(relu(conv1(x)))``, with both convs in
    the kernel and the ReLU and the scaled residual in their epilogues: on a 512 px x2
    input the separate multiply and add had taken a third of a 0.99 model's time."""

    def __init__(self, conv1: SparseConv2d, conv2: SparseConv2d, res_scale: float) -> None:
        super().__init__()
        self.conv1, self.conv2, self.res_scale = conv1, conv2, res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = sparse_conv3x3(x, self.conv1.weight, self.conv1.bias, relu=True)
        return sparse_conv3x3(
            hidden, self.conv2.weight, self.conv2.bias, residual=x, scale=self.res_scale
        )


def is_sparse_compatible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a convolution the sparse kernel computes exactly."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def sparsify(model: nn.Module, min_sparsity: float = MIN_SPARSITY) -> nn.Module:
    """A copy of ``model`` for CPU inference in which every 3x3 conv whose weight has at
    least ``min_sparsity`` zeros is a ``SparseConv2d``; ``model`` itself is unchanged.

    Once one conv is, the convs with at most ``RGB_CHANNELS`` channels in or out (the
    unpruned first and last convs) are too: the model then runs in NCHW, where the
    kernel beat oneDNN on them (the 32->3 last conv of a x4 tile took 43 ms against
    119 ms). A kernel conv followed by ``nn.PixelShuffle`` in an ``nn.Sequential`` (EDSR's
    and SwinIR's upsamplers) writes the shuffled layout itself and the shuffle becomes an
    ``nn.Identity``: torch's NCHW pixel shuffle was the slowest op of a sparse x4 forward.
    An EDSR residual block whose two convs are in the kernel becomes a ``SparseResBlock``.
    """
    model = copy.deepcopy(model).cpu().eval()
    convs = {name: m for name, m in model.named_modules() if is_sparse_compatible(m)}
    pruned = {name for name, conv in convs.items() if _zeros(conv.weight) >= min_sparsity}
    if not pruned:
        return model
    shuffles = _shuffled(model)
    for name, conv in convs.items():
        if name in pruned or min(conv.in_channels, conv.out_channels) <= RGB_CHANNELS:
            if name in shuffles:
                module, k = shuffles[name]
                module[k] = SparseConv2d.from_dense(conv, module[k + 1].upscale_factor)
                module[k + 1] = nn.Identity()
            else:
                model.set_submodule(name, SparseConv2d.from_dense(conv))
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, ResBlock)]
    for name, block in blocks:
        if isinstance(block.conv1, SparseConv2d) and isinstance(block.conv2, SparseConv2d):
            model.set_submodule(name, SparseResBlock(block.conv1, block.conv2, block.res_scale))
    return model


def _shuffled(model: nn.Module) -> dict[str, tuple[nn.Sequential, int]]:
    """Each module that an ``nn.PixelShuffle`` follows in an ``nn.Sequential``, by name:
    that Sequential and the module's index in it."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            for k in range(len(module) - 1):
                if isinstance(module[k + 1], nn.PixelShuffle):
                    found[f"{name}.{k}" if name else str(k)] = (module, k)
    return found


def _zeros(weight: torch.Tensor) -> float:
    return 1.0 - torch.count_nonzero(weight).item() / weight.numel()
