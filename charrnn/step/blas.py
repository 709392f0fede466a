"""The thread count of the BLAS behind NumPy, read and changed for a while.

NumPy's wheels bundle OpenBLAS, whose thread count can be changed at run time
through its C API; nothing in NumPy exposes it. `limited(1)` holds OpenBLAS to
one thread while charrnn runs its own threads (see parallel.py): two threads
each calling a multi-threaded BLAS would oversubscribe the cores, and on a
busy machine OpenBLAS's threads, which spin while they wait for each other,
then ran one step 3 to 10 times slower than one thread did. Where the BLAS is
another library, or the library cannot be found, `limited` does nothing: the
numbers stay the same, only the speed differs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading

# (get, set) entry points: the names in NumPy's own build first, then plain OpenBLAS
_NAMES = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
          ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
          ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
          ("openblas_get_num_threads", "openblas_set_num_threads"))
_lock = threading.Lock()


@functools.cache
def _openblas():
    """(get, set) for the OpenBLAS this process has loaded, or None."""
    import numpy  # noqa: F401  (loads the BLAS, so that it is in the process map)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:  # not Linux
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, put = getattr(lib, get_name), getattr(lib, set_name)
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


def threads() -> int | None:
    """How many threads the BLAS uses now, or None where that cannot be known."""
    api = _openblas()
    return None if api is None else api[0]()


@contextlib.contextmanager
def limited(n: int):
    """Hold the BLAS to at most n threads inside the block (process-wide), then restore it."""
    api = _openblas()
    if api is None:
        yield
        return
    get, put = api
    with _lock:
        before = get()
        if before > n:
            put(n)
    try:
        yield
    finally:
        if before > n:
            with _lock:
                put(before)
