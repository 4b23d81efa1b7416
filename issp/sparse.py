"""Inference with unstructured-sparse 3x3 convolutions that skips the zero weights on CPU.

A pruned conv's weight is kept as its non-zeros grouped by output channel (CSR over
``Cout``; each non-zero has an input channel, a kernel row and column, and a value). The
kernel computes one output row at a time: the bias, plus each non-zero's value times the
input row it points at, shifted by its kernel offset. The output row stays in L1 cache
while the non-zeros stream over it, and the work is proportional to the non-zeros.

``benchmarks/sparse_conv.py`` measured it against dense ``F.conv2d``, ``torch.sparse``
CSR and a pure-torch version of the same loop on edsr-tiny; only this compiled kernel
beat dense there. The kernel is plain C compiled on first use with the system C compiler
(``$CC`` or ``cc``, OpenMP) and cached under ``~/.cache/issp``; building takes about a
second. Forward only: ``SparseConv2d`` has no gradient.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
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

# Below about 60% zeros the kernel was no faster than dense F.conv2d on a 2-core AVX-512
# Xeon (python -m benchmarks.sparse_conv --ratios 0.5 0.6 0.75); 0.75 leaves a margin.
MIN_SPARSITY = 0.75

_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
/* One clone per instruction set; the loader picks the best one this CPU has. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

CLONES void sparse_conv3x3(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w,
                           int64_t cout, const int64_t *rowptr, const int32_t *channel,
                           const int32_t *ky, const int32_t *kx, const float *values,
                           const float *bias, float *out, int threads) {
  #pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < h; ++y) {
      const float *image = x + b * cin * h * w;
      for (int64_t co = 0; co < cout; ++co) {
        float *o = out + ((b * cout + co) * h + y) * w;
        const float start = bias ? bias[co] : 0.0f;
        for (int64_t i = 0; i < w; ++i) o[i] = start;
        for (int64_t j = rowptr[co]; j < rowptr[co + 1]; ++j) {
          const int64_t row = y + ky[j] - 1, dx = kx[j] - 1;
          if (row < 0 || row >= h) continue;
          const float *in = image + (channel[j] * h + row) * w;
          const float v = values[j];
          const int64_t lo = dx < 0 ? 1 : 0, hi = dx > 0 ? w - 1 : w;
          #pragma omp simd
          for (int64_t i = lo; i < hi; ++i) o[i] += v * in[i + dx];
        }
      }
    }
  }
}
"""
_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC")


@functools.cache
def _kernel() -> Callable[..., None]:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise IsspError("sparse inference needs a C compiler with OpenMP (set CC or install gcc)")
    key = hashlib.sha256("\0".join((_SOURCE, compiler, *_FLAGS)).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "issp"
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
    function.argtypes = [pointer, *[int64] * 5, *[pointer] * 7, ctypes.c_int]
    function.restype = None
    return function


@dataclass(frozen=True)
class SparseWeight:
    """The non-zeros of a ``(Cout, Cin, 3, 3)`` weight, grouped by output channel.

    Output channel ``co`` owns entries ``rowptr[co]:rowptr[co + 1]`` of ``channel``
    (input channel), ``ky``, ``kx`` (kernel row and column) and ``values``.
    """

    shape: tuple[int, int, int, int]
    rowptr: torch.Tensor
    channel: torch.Tensor
    ky: torch.Tensor
    kx: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        # The C kernel reads these through raw pointers: a wrong dtype or stride would be
        # read silently as garbage, so it is refused here.
        nnz = self.values.numel()
        expected = {
            "rowptr": (self.rowptr, torch.int64, self.shape[0] + 1),
            "channel": (self.channel, torch.int32, nnz),
            "ky": (self.ky, torch.int32, nnz),
            "kx": (self.kx, torch.int32, nnz),
            "values": (self.values, torch.float32, nnz),
        }
        for name, (tensor, dtype, numel) in expected.items():
            if tensor.dtype != dtype or tensor.numel() != numel or not tensor.is_contiguous():
                raise IsspError(f"SparseWeight.{name} must be {numel} contiguous {dtype}")

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> SparseWeight:
        """The non-zeros of a dense float32 3x3 conv weight."""
        if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
            raise IsspError(f"expected a (Cout, Cin, 3, 3) weight, got {tuple(weight.shape)}")
        weight = weight.detach().cpu().float()
        # nonzero() lists indices in row-major order, so entries come sorted by output channel.
        co, ci, ky, kx = weight.nonzero().unbind(1)
        rowptr = torch.zeros(weight.shape[0] + 1, dtype=torch.int64)
        rowptr[1:] = torch.bincount(co, minlength=weight.shape[0]).cumsum(0)
        return cls(
            shape=tuple(weight.shape),
            rowptr=rowptr,
            channel=ci.to(torch.int32).contiguous(),
            ky=ky.to(torch.int32).contiguous(),
            kx=kx.to(torch.int32).contiguous(),
            values=weight[co, ci, ky, kx].contiguous(),
        )

    @property
    def sparsity(self) -> float:
        """Share of the weight's entries that are zero."""
        return 1.0 - self.values.numel() / torch.Size(self.shape).numel()


def sparse_conv3x3(
    x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, dense_weight, bias, padding=1)`` for a float32 CPU ``x`` of shape
    ``(N, Cin, H, W)``, computed from the non-zeros only."""
    cout, cin = weight.shape[:2]
    if x.dim() != 4 or x.shape[1] != cin:
        raise IsspError(f"expected input (N, {cin}, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise IsspError(f"sparse conv runs on float32 CPU tensors, got {x.dtype} on {x.device}")
    x = x.contiguous()
    batch, _, h, w = x.shape
    out = torch.empty(batch, cout, h, w)
    if bias is not None:
        bias = bias.detach().float().contiguous()
    _kernel()(
        x.data_ptr(),
        batch,
        cin,
        h,
        w,
        cout,
        weight.rowptr.data_ptr(),
        weight.channel.data_ptr(),
        weight.ky.data_ptr(),
        weight.kx.data_ptr(),
        weight.values.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


class SparseConv2d(nn.Module):
    """A 3x3, stride 1, padding 1 convolution that stores and multiplies only its non-zeros."""

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        """The sparse twin of ``conv``; IsspError if its geometry is not 3x3/stride 1/pad 1."""
        if not is_sparse_compatible(conv):
            raise IsspError(f"only 3x3 convs with stride 1 and padding 1 run sparse, got {conv}")
        return cls(SparseWeight.from_dense(conv.weight), conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_conv3x3(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        cout, cin = self.weight.shape[:2]
        return f"{cin}, {cout}, kernel_size=(3, 3), sparsity={self.weight.sparsity:.3f}"


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
    least ``min_sparsity`` zeros is a ``SparseConv2d``; ``model`` itself is unchanged."""
    model = copy.deepcopy(model).cpu().eval()
    for name, module in list(model.named_modules()):
        if is_sparse_compatible(module):
            zeros = 1.0 - torch.count_nonzero(module.weight).item() / module.weight.numel()
            if zeros >= min_sparsity:
                model.set_submodule(name, SparseConv2d.from_dense(module))
    return model
