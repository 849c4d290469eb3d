"""`llie enhance` as a user runs it: photos per second of a fresh command on a folder, start-up subtracted.

Each setting runs twice per round, on a folder of one photo and on one of ``n + 1``; the difference of the
two wall times is what ``n`` photos cost once the command has started (imports, model loading and the
first photo's first-call costs fall out). The settings alternate round by round, so drifting machine load
hits them alike; each figure is the median round. Settings: the default (one photo per core at a time,
``--workers``) and ``--workers 1`` (one photo at a time on all cores' torch threads, the command before
``--workers`` existed).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, synthetic_pair, to_png

SETTINGS = {"default": (), "workers_1": ("--workers", "1")}


def _wall_seconds(folder: Path, out: Path, extra: tuple[str, ...]) -> float:
    cmd = [sys.executable, "-m", "llie_cli", "enhance", "--input", str(folder), "--output", str(out), *extra]
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - t


def command_line_throughput(width: int, height: int, n_images: int, rounds: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="llie-bench-command-") as tmp:
        root = Path(tmp)
        one, many = root / "one", root / "many"
        for i in range(n_images + 1):
            png = to_png(synthetic_pair(width, height, seed=400 + i)[0])
            for folder in [one, many] if i == 0 else [many]:
                folder.mkdir(exist_ok=True)
                (folder / f"p{i:03d}.png").write_bytes(png)
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for r in range(rounds):
            for name, extra in SETTINGS.items():
                started = _wall_seconds(one, root / f"out-{name}-{r}-one", extra)
                finished = _wall_seconds(many, root / f"out-{name}-{r}-many", extra)
                rates[name].append(n_images / max(finished - started, 1e-9))
    return {
        "size": f"{width}x{height}",
        "images": n_images,
        "rounds": rounds,
        **{name: {"images_per_s": statistics.median(r), "rounds_images_per_s": r} for name, r in rates.items()},
    }
