"""Photos side by side for ``llie enhance``: one thread per photo, within a memory budget.

A photo keeps one core busy far better than it shares two: the refiner's convolutions on a 600x400
photo gain little from a second torch thread, while two photos on one thread each take barely longer
than one (docs/benchmarks.md). torch, numpy, Pillow, zlib and XGBoost release the GIL for
their work, so threads share the loaded model instead of each process loading its own.

A photo's peak memory grows with its pixels, so photos start only while the estimated peaks of those in
flight fit in half the memory the machine (or the process's cgroup) has free; a photo too large for
that runs alone rather than not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from llie.resources import available_memory

T = TypeVar("T")
R = TypeVar("R")

# peak bytes per pixel of one photo through all four stages, encoding and reference scores (the
# benchmarks' memory section: about 35 B/px without reference scores, 52 with them)
PEAK_BYTES_PER_PIXEL = 56


class MemoryBudget:
    """Admits work while the bytes held stay within ``limit`` (None: no limit); one piece of work is
    always admitted when nothing else is held, however large."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.held = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.limit is None or self.held == 0 or self.held + nbytes <= self.limit)
            self.held += nbytes
        try:
            yield
        finally:
            with self._changed:
                self.held -= nbytes
                self._changed.notify_all()


def default_budget() -> MemoryBudget:
    free = available_memory()
    return MemoryBudget(None if free is None else free // 2)


def map_in_order(
    fn: Callable[[T], R], items: Iterable[T], workers: int, cost: Callable[[T], int], budget: MemoryBudget
) -> Iterator[R]:
    """``fn`` of every item on ``workers`` threads, each call holding ``cost(item)`` bytes of ``budget``;
    results in the order of ``items``. ``fn`` should return something small (a status, scores): results
    wait here until the ones before them are done."""

    def call(item: T) -> R:
        with budget.hold(cost(item)):
            return fn(item)

    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="llie-photo") as pool:
        yield from pool.map(call, items)
