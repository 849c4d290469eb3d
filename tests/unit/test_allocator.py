"""llie.allocator sets glibc's malloc thresholds at run time, to the values the flow's workers get."""

from __future__ import annotations

import ctypes
import sys

import pytest

from llie import allocator


def test_thresholds_are_the_flow_workers():
    from flows.worker_env import WORKER_PRE_SPAWN_ENV

    assert WORKER_PRE_SPAWN_ENV["MALLOC_MMAP_THRESHOLD_"] == str(allocator.MMAP_THRESHOLD)
    assert WORKER_PRE_SPAWN_ENV["MALLOC_TRIM_THRESHOLD_"] == str(allocator.TRIM_THRESHOLD)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_settle_takes_effect_on_glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        pytest.skip("not glibc")
    if not hasattr(libc, "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert allocator.settle() is True
    # a 4 MB block now comes from the heap, not a fresh mapping: freeing and taking it again reuses it
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    first = libc.malloc(4 << 20)
    libc.free(first)
    second = libc.malloc(4 << 20)
    libc.free(second)
    assert first == second
