"""Keeping a long-running server's memory flat: glibc's allocator told to keep fewer
arenas and to hand freed memory back.

Gradio runs handlers on many threads, and glibc gives threads their own malloc arenas (up
to eight per core); tensors of every size freed on one thread and allocated on another
leave each arena holding memory the process no longer uses, so resident memory creeps up
under a mixed load (``benchmarks/soak.py``). Two arenas, and a ``malloc_trim`` after each
costly request (``trimmed``) and every few seconds, keep what is freed from staying
resident. On a C library without these calls (macOS, musl) both are no-ops.

oneDNN, which runs the dense convolutions, also keeps a cache of compiled primitives per
input shape (1024 by default); every new image size adds to it. ``app.py`` bounds it with
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` (``PRIMITIVE_CACHE``) before torch is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
ARENAS = 2
# Compiled oneDNN primitives kept: enough for a few image sizes of a model's dozen convs
# (``benchmarks/shape_memory.py``; figures in docs/benchmarks.md).
PRIMITIVE_CACHE = 64


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; call before the server starts its threads.
    False where the C library has no such setting."""
    libc = _libc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Hand memory freed inside the heap back to the system; False where there is no such
    call or nothing could be released."""
    libc = _libc()
    return bool(libc and libc.malloc_trim(0))


def trimmed(fn: Callable) -> Callable:
    """``fn``, handing freed memory back each time it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            release_free_memory()

    return wrapper
