"""`llie enhance`'s photos side by side: threads, order, and the memory budget; what the machine has."""

from __future__ import annotations

import threading
import time

import pytest

from llie import resources
from llie_cli.parallel import MemoryBudget, map_in_order


def test_results_come_in_input_order_from_calls_that_ran_at_once():
    """Two calls must be inside ``fn`` together to pass the barrier (one at a time, it breaks), and the
    later items finish first, yet the results keep the order of the items."""
    barrier = threading.Barrier(2, timeout=10)

    def fn(item: int) -> int:
        if item < 2:
            barrier.wait()
        time.sleep(0.02 * (5 - item))
        return item * 10

    assert list(map_in_order(fn, range(5), 2, cost=lambda item: 0, budget=MemoryBudget(None))) == [0, 10, 20, 30, 40]


def test_one_worker_runs_in_the_calling_thread():
    seen = list(map_in_order(lambda item: threading.current_thread(), "ab", 1, lambda item: 0, MemoryBudget(None)))
    assert seen == [threading.current_thread()] * 2


def test_an_error_reaches_the_caller():
    def fn(item: int) -> int:
        if item == 3:
            raise RuntimeError("disk gone")
        return item

    with pytest.raises(RuntimeError, match="disk gone"):
        list(map_in_order(fn, range(6), 2, lambda item: 0, MemoryBudget(None)))


def test_the_budget_keeps_what_is_held_at_once_within_its_limit():
    budget, peak, lock = MemoryBudget(100), [0], threading.Lock()
    in_flight = [0]

    def fn(cost: int) -> int:
        with lock:
            in_flight[0] += cost
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= cost
        return cost

    costs = [60, 30, 50, 20, 70, 10, 40, 90]
    assert list(map_in_order(fn, costs, 4, cost=lambda c: c, budget=budget)) == costs
    assert 60 < peak[0] <= 100  # more than one photo at a time, never more than the limit
    assert budget.held == 0


def test_work_larger_than_the_budget_runs_alone_rather_than_never():
    budget, held_with = MemoryBudget(100), []

    def fn(cost: int) -> int:
        held_with.append((cost, budget.held))
        time.sleep(0.01)
        return cost

    assert list(map_in_order(fn, [250, 10, 20], 3, cost=lambda c: c, budget=budget)) == [250, 10, 20]
    assert dict(held_with)[250] == 250  # nothing else was held beside it


def test_available_cpus_and_memory_are_positive_here():
    assert resources.available_cpus() >= 1
    free = resources.available_memory()
    assert free is not None and 0 < free < 1 << 50


@pytest.mark.parametrize(
    "files, headroom",
    [
        ({"memory.max": "max\n", "memory.current": "5000\n"}, None),  # cgroup v2 without a limit
        ({"memory.max": "8000\n", "memory.current": "5000\n"}, 3000),
        ({"memory.max": "8000\n", "memory.current": "9000\n"}, 0),  # over its limit: nothing to spare
        # the page cache's inactive part is given back on demand: it counts as free
        ({"memory.max": "8000\n", "memory.current": "7900\n", "memory.stat": "anon 10\ninactive_file 2500\n"}, 2600),
        (
            {
                "memory/memory.limit_in_bytes": "6000",
                "memory/memory.usage_in_bytes": "5000",
                "memory/memory.stat": "total_inactive_file 3000\n",
            },
            4000,
        ),
        ({"memory/memory.limit_in_bytes": "6000", "memory/memory.usage_in_bytes": "1000"}, 5000),  # v1
        ({"memory/memory.limit_in_bytes": str(1 << 62), "memory/memory.usage_in_bytes": "1"}, None),  # v1: none
        ({"memory.max": "garbled\n", "memory.current": "5000\n"}, None),  # unreadable: as if absent
        ({}, None),  # no cgroup files
    ],
)
def test_a_cgroup_limit_lowers_the_memory_available(tmp_path, monkeypatch, files, headroom):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000 kB\nMemAvailable:   20000 kB\n")
    monkeypatch.setattr(resources, "_CGROUP", tmp_path)
    monkeypatch.setattr(resources, "_MEMINFO", meminfo)
    assert resources._cgroup_headroom() == headroom
    expected = 20000 * 1024 if headroom is None else min(headroom, 20000 * 1024)
    assert resources.available_memory() == expected
