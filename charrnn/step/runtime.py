"""Process-wide settings that make the NumPy core fast; no effect on results.

The training step allocates the same few large arrays (gate activations,
cell states, gradients) every step. By default glibc hands allocations over
32 MB (and, adaptively, smaller ones) straight to mmap and returns them to the
OS on free, so every step pays page faults to zero fresh memory again: about
a tenth of a step's time for the reference model. Keeping freed memory in the
heap lets the next step reuse it. Peak memory is unchanged; it is simply not
returned to the OS until the process ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory instead of unmapping it. Returns whether it applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, another libc): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the OS once (glibc's malloc_trim). Returns whether it applied.

    keep_freed_memory keeps everything freed; after preparing a corpus that is
    the text and its copies, which training never touches again. Returning it
    once, before the first step, keeps the training process's memory to the
    model, its buffers and the memory-mapped ids.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))
