"""glibc's malloc thresholds for a process that enhances photo after photo.

glibc starts with a 128 KiB mmap threshold that rises with the blocks a process frees, and trims the
heap top whenever more than twice that lies free. A fresh process enhancing 600x400 photos (temporaries
of 1-3 MB) therefore maps, page-faults and unmaps many of its arrays for a while: ``llie enhance``
spent about 15 % more CPU per photo than the same work in a long-lived process (benchmarks/README.md).
``settle()`` sets the values glibc's dynamic thresholds end at on 64-bit (mmap 32 MiB, trim twice that),
the ones the flow gives its Dask workers through their environment (flows/worker_env.py), at once.
Memory beyond 64 MiB free still goes back to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def settle() -> bool:
    """Set the thresholds through mallopt; False (nothing done) off glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt is a stub
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
