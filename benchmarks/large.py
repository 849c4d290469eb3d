"""Camera-sized photos: seconds per photo at 12 and 24 MP, one look at every size, the archive estimate,
and the command line's start-up.

* **per photo**: decode -> enhance -> encode of one synthetic photo (PNG in memory, the default
  compression), for ``stages="hist"`` and ``"full"``, median of a few passes, with torch on all cores and
  on one thread (as a Dask worker runs it); the decode+encode floor is timed beside it. The archive
  estimate is 3600 s over the one-thread full pipeline: photos per hour per core.
* **scale consistency**: the 12 MP photo enhanced and then area-shrunk to 600 px on the long side,
  against the shrunk photo (stored at 8 bits) enhanced, as PSNR; the baseline is the same figure for
  the plain path (every stage at full size), whose time is reported too.
* **start-up**: wall time of ``llie enhance --stages hist`` on one small photo in a fresh process,
  against ``python -c "import numpy"`` started the same way.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import REPO, synthetic_pair, to_png, worker_threads

SHRUNK_LONG_SIDE = 600


def _median_seconds(fn, repeats: int) -> tuple[float, list[float], float]:
    """Median wall seconds of ``repeats`` calls, all of them, and the median process CPU seconds
    (less disturbed by other processes' load than wall time; above wall time when threads run)."""
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), times, statistics.median(cpu)


def _shrunk(rgb: np.ndarray) -> np.ndarray:
    from llie.method.working_size import area_downscale, working_shape

    shape = working_shape(*rgb.shape[:2], SHRUNK_LONG_SIDE)
    return (np.rint(np.clip(area_downscale(rgb, shape), 0, 1) * 255) / 255).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from llie.metrics import psnr

    return float(psnr(np.rint(np.clip(a, 0, 1) * 255) / 255, np.rint(np.clip(b, 0, 1) * 255) / 255))


def per_photo(enhancer, width: int, height: int, repeats: int, cores: int) -> dict:
    """Seconds per photo of decode -> enhance -> encode, both stage sets, all cores and one thread."""
    from llie.batch.imageio import decode_image, encode_image

    png = to_png(synthetic_pair(width, height, seed=4000)[0])
    decoded = decode_image(png)
    out = {"size": f"{width}x{height}", "megapixels": width * height / 1e6, "png_bytes": len(png), "repeats": repeats}
    out["io_floor_s"], _, out["io_floor_cpu_s"] = _median_seconds(
        lambda: encode_image(decode_image(png).rgb, decoded), repeats
    )
    for threads in sorted({cores, 1}, reverse=True):
        for stages in ("hist", "full"):
            seconds: dict[str, float] = {}

            def photo(stages=stages, seconds=seconds):
                t = time.perf_counter()
                img = decode_image(png)
                seconds["decode"] = time.perf_counter() - t
                result = enhancer.enhance(img.rgb, stages=stages, mask=img.opaque)
                t = time.perf_counter()
                encode_image(result.image, img)
                seconds.update(result.seconds, encode=time.perf_counter() - t)

            with worker_threads(threads):
                photo()  # first-call costs (allocator, torch kernels) out of the timing
                median, times, cpu = _median_seconds(photo, repeats)
            out[f"{stages}_threads_{threads}"] = {
                "seconds": median,
                "cpu_s": cpu,
                "spread_s": [min(times), max(times)],
                "parts_s": dict(seconds),
            }
    out["photos_per_hour_per_core"] = 3600.0 / out["full_threads_1"]["seconds"]
    return out


def scale_consistency(enhancer, width: int, height: int, plain_baseline: bool) -> dict:
    """PSNR of enhance-then-shrink against shrink-then-enhance, for the working-size path and the plain one."""
    from llie.method.pipeline import Enhancer
    from llie.method.working_size import WorkingSize

    big = synthetic_pair(width, height, seed=4100)[0]
    small = _shrunk(big)
    out = {
        "size": f"{width}x{height}",
        "shrunk_to": f"{small.shape[1]}x{small.shape[0]}",
        "working_long_side": enhancer.working.long_side,
    }
    paths = {"working_size": enhancer}
    if plain_baseline:
        paths["plain"] = Enhancer(
            enhancer.bundle, device=str(enhancer.device), tiling=enhancer.tiling, working=WorkingSize(long_side=10**9)
        )
    for name, e in paths.items():
        for stages in ("hist", "full"):
            t = time.perf_counter()
            result = e.enhance(big, stages=stages)
            seconds = time.perf_counter() - t
            direct = enhancer.enhance(small, stages=stages).image
            out[f"{name}_{stages}"] = {"psnr_db": _psnr(_shrunk(result.image), direct), "enhance_s": seconds}
    return out


def startup(repeats: int = 3) -> dict:
    """Fresh-process wall time of `llie enhance --stages hist` on one small photo, and of importing numpy."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="llie-bench-startup-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        Image.fromarray(np.full((48, 64, 3), 30, np.uint8)).save(root / "in" / "a.png")
        commands = {
            "enhance_hist": [
                sys.executable,
                "-m",
                "llie_cli",
                "enhance",
                "--input",
                str(root / "in"),
                "--output",
                str(root / "out"),
                "--stages",
                "hist",
            ],
            "python_numpy": [sys.executable, "-c", "import numpy"],
        }
        out = {}
        for name, cmd in commands.items():
            times = []
            for i in range(repeats):
                cmd_i = [c.replace(str(root / "out"), str(root / f"out{i}")) for c in cmd]
                t = time.perf_counter()
                subprocess.run(cmd_i, cwd=REPO, check=True, capture_output=True)
                times.append(time.perf_counter() - t)
            out[f"{name}_s"] = statistics.median(times)
    out["imports_torch"] = _imports_torch()
    return out


# runs `llie enhance` in a fresh interpreter through the console entry point, recording every
# EnhanceResult.seconds it produces (stages 1-3 and the refiner, per image)
CLI_PROBE = """
import json, sys
from llie.method import pipeline
seconds = []
enhance = pipeline.Enhancer.enhance
def recorded(self, *args, **kwargs):
    result = enhance(self, *args, **kwargs)
    seconds.append(result.seconds)
    return result
pipeline.Enhancer.enhance = recorded
from llie_cli.main import main
sys.argv = ["llie", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(seconds))
"""


def cli_stage_seconds(width: int, height: int, n_images: int) -> dict:
    """Median milliseconds per image of each stage inside `llie enhance` (a fresh process, as a user
    runs it: default threads, torch loaded for the full pipeline), for both stage sets; the first
    image, which pays first-call costs, is left out of the median."""
    with tempfile.TemporaryDirectory(prefix="llie-bench-cli-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        for i in range(n_images):
            (root / "in" / f"p{i:03d}.png").write_bytes(to_png(synthetic_pair(width, height, seed=300 + i)[0]))
        out = {"size": f"{width}x{height}", "images": n_images}
        for stages in ("hist", "full"):
            args = ["enhance", "--input", str(root / "in"), "--output", str(root / stages), "--stages", stages]
            done = subprocess.run(
                [sys.executable, "-c", CLI_PROBE, *args], cwd=REPO, capture_output=True, text=True, check=True
            )
            per_image = json.loads(done.stdout.strip().splitlines()[-1])
            steady = per_image[1:] or per_image
            out[stages] = {k: 1e3 * statistics.median(p[k] for p in steady) for k in steady[0]}
    return out


def _imports_torch() -> bool:
    probe = (
        "import sys\nfrom llie_cli.main import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {
            "measured": False,
            "note": "no CUDA device on this machine: the GPU path (batched tiles, fp16 autocast) was not timed",
        }
    return {"measured": False, "note": "a CUDA device is present; time it with --model and device cuda by hand"}


def large_photos(
    enhancer,
    sizes: tuple[tuple[str, int, int, int], ...],
    consistency: tuple[int, int],
    cores: int,
    startup_repeats: int = 3,
    cli_images: tuple[int, int, int] = (600, 400, 12),
) -> dict:
    return {
        "sizes": {name: per_photo(enhancer, w, h, repeats, cores) for name, w, h, repeats in sizes},
        "scale_consistency": scale_consistency(enhancer, *consistency, plain_baseline=True),
        "startup": startup(startup_repeats),
        "cli_stage_ms": cli_stage_seconds(*cli_images),
        "gpu": gpu(),
    }
