"""Shared pieces: synthetic low-light images, timing, thread control, machine info."""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from flows.worker_env import WORKER_PRE_SPAWN_ENV
from llie.resources import available_cpus as cpu_count

REPO = Path(__file__).resolve().parents[1]

# One thread for every native pool, as distributed's nanny sets for the workers it spawns.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
# Everything distributed's nanny exports to a worker (distributed.nanny.pre-spawn-environ). Setting
# MALLOC_TRIM_THRESHOLD_ also turns off glibc's dynamic mmap threshold: every temporary array above
# 128 KiB is then mmap'ed and page-faulted afresh, which the orchestration section measures.
DASK_WORKER_ENV = {**SINGLE_THREAD_ENV, "MALLOC_TRIM_THRESHOLD_": "65536"}
# What a worker of llie's flow gets: Dask's variables with fixed malloc thresholds that undo their cost.
LLIE_WORKER_ENV = {**DASK_WORKER_ENV, **WORKER_PRE_SPAWN_ENV}


# --------------------------------------------------------------------------- synthetic images


def clean_image(width: int, height: int, seed: int) -> np.ndarray:
    """A well-lit synthetic photo: smooth colour gradients, shapes and fine texture, float32 [0, 1].

    Smooth areas exercise the histogram stages and PNG's predictors, the texture and edges give the
    refiner and SSIM something to work on, so it compresses and enhances like a photo, not like noise.
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y  # broadcast HxW
    fx, fy = rng.uniform(1.5, 4.0, 2).astype(np.float32)
    blobs = np.sin(np.float32(2 * np.pi) * fx * x + np.float32(rng.uniform(0, 6))) * np.cos(
        np.float32(2 * np.pi) * fy * y + np.float32(rng.uniform(0, 6))
    )
    # texture at a fixed pixel scale (period ~9 and ~23 px), like fabric or foliage
    tx = np.sin(np.arange(width, dtype=np.float32)[None, :] * np.float32(0.7) + np.float32(rng.uniform(0, 6)))
    ty = np.sin(np.arange(height, dtype=np.float32)[:, None] * np.float32(0.27) + np.float32(rng.uniform(0, 6)))
    texture = tx * ty
    for c in range(3):
        a, b, t = rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.25), rng.uniform(0.03, 0.08)
        np.multiply(ramp, np.float32(a), out=img[..., c])
        img[..., c] += np.float32(0.15 + 0.2 * rng.random())
        img[..., c] += np.float32(b) * blobs
        img[..., c] += np.float32(t) * texture
    # hard-edged rectangles: edges and flat regions of other colours
    for _ in range(8):
        h0, w0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        h1 = h0 + int(rng.integers(height // 10 + 1, height // 3 + 2))
        w1 = w0 + int(rng.integers(width // 10 + 1, width // 3 + 2))
        colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        img[h0:h1, w0:w1] *= np.float32(0.3)
        img[h0:h1, w0:w1] += np.float32(0.7) * colour
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(0.01)
    return np.clip(img, 0.0, 1.0, out=img)


def synthetic_pair(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, clean): the clean image 8-bit quantised, and its darkened version from llie.training.synth.darken."""
    from llie.training.synth import darken

    clean = np.rint(clean_image(width, height, seed) * np.float32(255.0)) / np.float32(255.0)
    low = darken(clean, np.random.default_rng([seed, 1]))
    return low, clean


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_images(
    root: Path, count: int, width: int, height: int, seed: int = 0, with_reference: bool = False
) -> list[str]:
    """``count`` darkened PNGs ``img-0000.png``... under ``root/in`` (and their clean versions under ``root/ref``)."""
    names = []
    for i in range(count):
        low, clean = synthetic_pair(width, height, seed + i)
        name = f"img-{i:04d}.png"
        (root / "in").mkdir(parents=True, exist_ok=True)
        (root / "in" / name).write_bytes(to_png(low))
        if with_reference:
            (root / "ref").mkdir(parents=True, exist_ok=True)
            (root / "ref" / name).write_bytes(to_png(clean))
        names.append(name)
    return names


# --------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median (and spread) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return summarise_times(times)


def summarise_times(times: list[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def set_torch_threads(n: int) -> int:
    import torch

    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


@contextmanager
def worker_threads(n: int):
    """Torch on ``n`` threads and OMP_NUM_THREADS=n, which the PNG writer reads for its bands (as a
    Dask worker, whose nanny sets 1, runs them); both restored afterwards."""
    import torch

    before_torch, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    set_torch_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        set_torch_threads(before_torch)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env


# --------------------------------------------------------------------------- subprocesses


def run_json_subprocess(
    args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 900, via_shell: bool = False
) -> dict:
    """Run ``python -m <args>`` from the repo root; its last stdout line is a JSON object.

    ``via_shell``: start it as a child of a small ``/bin/sh`` instead of this process. On Linux a
    process's ``ru_maxrss`` starts at the RSS of the address space it was exec'ed from (with vfork,
    that of this big benchmark process), so a memory measurement needs a small parent.
    """
    env = dict(os.environ)
    # distributed's Nanny writes its pre-spawn variables into *this* process's os.environ when it
    # starts a worker, and leaves them there; a child must get only what it asks for.
    for key in LLIE_WORKER_ENV:
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH", "")] if p)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", *args]
    if via_shell:
        # not the shell's last command, so the shell forks it rather than exec'ing into it
        cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def other_llie_processes() -> list[str]:
    """Command lines of other llie training/benchmark processes: load that would skew the numbers."""
    out = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "llie train" in cmd or "llie_cli train" in cmd:
            out.append(cmd)
    return out


def machine_info() -> dict:
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {
        "cores": cpu_count(),
        "os_cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_default_threads": torch.get_num_threads(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "concurrent_training_processes": other_llie_processes(),
        "versions": {
            name: _version(name)
            for name in (
                "llie",
                "numpy",
                "scipy",
                "torch",
                "xgboost-cpu",
                "pillow",
                "scikit-image",
                "opencv-python-headless",
                "prefect",
                "prefect-dask",
                "dask",
                "distributed",
            )
        },
    }
