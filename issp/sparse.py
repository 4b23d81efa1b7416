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

log = logging.getLogger(__name__)

# On whole edsr-tiny images (512 px, 1 thread, 2-core AVX-512 Xeon) the kernel beat dense
# float32 channels-last from 90% zeros at x2 and x4 (1.5x-2.5x at 0.9-0.99) but lost at
# 75% at x2 (0.82x) and at 50% (python -m benchmarks.upscale_latency, table 2).
MIN_SPARSITY = 0.9
# Convs with this few channels in or out (RGB in, RGB out) run in the kernel whenever
# the model does; see sparsify().
RGB_CHANNELS = 3

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
/* One clone per instruction set; the loader picks the best one this CPU has. */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif
/* An explicit vector type keeps the sums in registers: with plain arrays GCC -O3
   interchanges the loops and sums one pixel at a time. */
#define LANES 16
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

/* Copy input row k of image b, for every channel, into slot k mod 3 of the thread's rows
   (zeros above and below the image). Column 0 and columns past w stay zero: padding. */
static void load_row(float *rows, const float *x, int64_t b, int64_t k, int64_t cin,
                     int64_t h, int64_t w, int64_t wp) {
  for (int64_t ci = 0; ci < cin; ++ci) {
    float *dst = rows + (ci * 3 + (k + 3) % 3) * wp + 1;
    if (k < 0 || k >= h) memset(dst, 0, sizeof(float) * w);
    else memcpy(dst, x + ((b * cin + ci) * h + k) * w, sizeof(float) * w);
  }
}

/* BLOCK output pixels of a row are summed in registers at once (set by -DBLOCK). Each
   thread keeps the three input rows an output row needs, zero-padded, in a small buffer
   that stays in cache, and loads one new row per output row. With shuffle r > 1 the
   result is written pixel-shuffled: channel co = (c * r + i) * r + j of row y goes to
   channel c, row y * r + i, every r-th column from j. Returns 1 if out of memory. */
CLONES int sparse_conv3x3(const float *x, int64_t batch, int64_t cin, int64_t h, int64_t w,
                          int64_t cout, int64_t shuffle, const int64_t *rowptr,
                          const int32_t *channel, const int32_t *ky, const int32_t *kx,
                          const float *values, const float *bias, float *out, int threads) {
  const int64_t nnz = rowptr[cout], r = shuffle, hs = h * r, ws = w * r;
  const int64_t wp = (w + BLOCK - 1) / BLOCK * BLOCK + 2;
  int failed = 0;
  int64_t *tap = malloc(sizeof(int64_t) * (nnz > 0 ? nnz : 1));
  if (!tap) return 1;
  for (int64_t j = 0; j < nnz; ++j) tap[j] = channel[j] * 3 * wp + kx[j];
  #pragma omp parallel num_threads(threads)
  {
    float *rows = calloc(cin * 3 * wp, sizeof(float));
    int64_t loaded_b = -1, loaded_y = -2;
    if (!rows) {
      #pragma omp atomic write
      failed = 1;
    }
    #pragma omp for schedule(static)
    for (int64_t by = 0; by < batch * h; ++by) {
      if (!rows) continue;
      const int64_t b = by / h, y = by % h;
      const int64_t first = (b == loaded_b && y == loaded_y + 1) ? y + 1 : y - 1;
      for (int64_t k = first; k <= y + 1; ++k) load_row(rows, x, b, k, cin, h, w, wp);
      loaded_b = b;
      loaded_y = y;
      const int64_t slot[3] = {(y + 2) % 3 * wp, y % 3 * wp, (y + 1) % 3 * wp};
      for (int64_t co = 0; co < cout; ++co) {
        const int64_t c = co / (r * r), i = co / r % r, j0 = co % r;
        float *o = out + ((b * (cout / (r * r)) + c) * hs + y * r + i) * ws + j0;
        const float start = bias ? bias[co] : 0.0f;
        for (int64_t x0 = 0; x0 < w; x0 += BLOCK) {
          vec acc[BLOCK / LANES];
          for (int k = 0; k < BLOCK / LANES; ++k) acc[k] = (vec){0} + start;
          for (int64_t j = rowptr[co]; j < rowptr[co + 1]; ++j) {
            const float v = values[j], *in = rows + tap[j] + slot[ky[j]] + x0;
            for (int k = 0; k < BLOCK / LANES; ++k) {
              vec pixels;
              memcpy(&pixels, in + k * LANES, sizeof(vec)); /* an unaligned load */
              acc[k] += v * pixels;
            }
          }
          const int64_t n = w - x0 < BLOCK ? w - x0 : BLOCK;
          const float *sum = (const float *)acc;
          if (r == 1) {
            memcpy(o + x0, sum, sizeof(float) * n);
          } else {
            for (int64_t t = 0; t < n; ++t) o[(x0 + t) * r] = sum[t];
          }
        }
      }
    }
    free(rows);
  }
  free(tap);
  return failed;
}
"""
# Output pixels the kernel sums in registers at once: 4 AVX-512 or 8 AVX2 vectors.
BLOCK = 64
_FLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", f"-DBLOCK={BLOCK}")


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
    function.argtypes = [pointer, *[int64] * 6, *[pointer] * 7, ctypes.c_int]
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
    x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None, shuffle: int = 1
) -> torch.Tensor:
    """``F.conv2d(x, dense_weight, bias, padding=1)`` for a float32 CPU ``x`` of shape
    ``(N, Cin, H, W)``, computed from the non-zeros only; with ``shuffle`` r, followed by
    ``F.pixel_shuffle(..., r)`` at no extra cost (the kernel writes the shuffled layout)."""
    cout, cin = weight.shape[:2]
    if x.dim() != 4 or x.shape[1] != cin:
        raise IsspError(f"expected input (N, {cin}, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise IsspError(f"sparse conv runs on float32 CPU tensors, got {x.dtype} on {x.device}")
    if shuffle < 1 or cout % (shuffle * shuffle):
        raise IsspError(f"{cout} output channels cannot be pixel-shuffled by {shuffle}")
    x = x.contiguous()
    batch, _, h, w = x.shape
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
        weight.rowptr.data_ptr(),
        weight.channel.data_ptr(),
        weight.ky.data_ptr(),
        weight.kx.data_ptr(),
        weight.values.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads(),
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
        return cls(SparseWeight.from_dense(conv.weight), conv.bias, shuffle)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_conv3x3(x, self.weight, self.bias, self.shuffle)

    def extra_repr(self) -> str:
        cout, cin = self.weight.shape[:2]
        shuffle = f", shuffle={self.shuffle}" if self.shuffle > 1 else ""
        return f"{cin}, {cout}, kernel_size=(3, 3), sparsity={self.weight.sparsity:.3f}{shuffle}"


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
    """
    model = copy.deepcopy(model).cpu().eval()
    convs = {name: m for name, m in model.named_modules() if is_sparse_compatible(m)}
    pruned = {name for name, conv in convs.items() if _zeros(conv.weight) >= min_sparsity}
    if not pruned:
        return model
    for name, conv in convs.items():
        if name in pruned or min(conv.in_channels, conv.out_channels) <= RGB_CHANNELS:
            model.set_submodule(name, SparseConv2d.from_dense(conv))
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for k in range(len(module) - 1):
                conv, shuffle = module[k], module[k + 1]
                if isinstance(conv, SparseConv2d) and isinstance(shuffle, nn.PixelShuffle):
                    module[k] = SparseConv2d(conv.weight, conv.bias, shuffle.upscale_factor)
                    module[k + 1] = nn.Identity()
    return model


def _zeros(weight: torch.Tensor) -> float:
    return 1.0 - torch.count_nonzero(weight).item() / weight.numel()
