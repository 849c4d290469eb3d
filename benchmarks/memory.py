"""Peak resident memory of one worker process enhancing one big image.

Each measurement is a fresh subprocess with the environment of a flow's Dask worker (``python -m benchmarks.memory ...``): ``ru_maxrss`` only
ever grows, so the baseline (after imports and model load) and the peak must come from a process
that has done nothing else. Two paths are measured:

* ``pipeline``: decode -> enhance (all stages) -> encode, the pipeline itself (the target row);
* ``archive``: ``llie.batch.archive.process_shard`` on that one file, as a flow worker runs it (read, decode,
  no-reference stats, enhance, encode, write, PSNR/SSIM against a reference when given).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from .common import LLIE_WORKER_ENV, run_json_subprocess, synthetic_pair, to_png


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def _status_bytes(field: str) -> int | None:
    """A size field of /proc/self/status (VmRSS: now, VmHWM: this address space's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("pipeline", "archive"), required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--reference")
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model")
    a = p.parse_args(argv)

    from llie.batch import archive
    from llie.batch.imageio import decode_image, encode_image
    from llie.batch.spec import RunSpec
    from llie.method.pipeline import Enhancer, set_threads

    set_threads(a.threads)
    enhancer = Enhancer.load(a.model, threads=a.threads)
    baseline = _maxrss_bytes()
    baseline_current = _status_bytes("VmRSS")
    t = time.perf_counter()
    image = Path(a.image)
    if a.mode == "pipeline":
        decoded = decode_image(image.read_bytes())
        result = enhancer.enhance(decoded.rgb, stages="full")
        data = encode_image(result.image, like=decoded)
        Path(a.output).mkdir(parents=True, exist_ok=True)
        (Path(a.output) / image.name).write_bytes(data)
        size = f"{decoded.width}x{decoded.height}"
    else:
        shard = archive.plan_shards([image.name], 1)[0]
        rows = archive.process_shard(
            RunSpec(str(image.parent), a.output, reference_url=str(Path(a.reference).parent) if a.reference else None),
            shard,
            enhancer,
        )
        if rows[0]["status"] != "ok":
            raise SystemExit(f"failed: {rows[0]['error']}")
        size = f"{rows[0]['width']}x{rows[0]['height']}"
    seconds = time.perf_counter() - t
    peak = _maxrss_bytes()
    hwm = _status_bytes("VmHWM")
    print(
        json.dumps(
            {
                "mode": a.mode,
                "size": size,
                "baseline_rss_bytes": baseline,
                "baseline_current_rss_bytes": baseline_current,
                "peak_rss_bytes": peak,
                "increase_bytes": peak - baseline,
                "vm_hwm_bytes": hwm,
                "seconds": seconds,
                "torch_threads": a.threads,
                "reference": bool(a.reference),
            }
        )
    )


def peak_rss(workdir: Path, width: int, height: int, model: str | None = None, archive_path: bool = True) -> dict:
    """Peak RSS of the pipeline and of the archive worker path on one ``width`` x ``height`` image."""
    low, clean = synthetic_pair(width, height, seed=3000)
    (workdir / "in").mkdir(parents=True, exist_ok=True)
    (workdir / "ref").mkdir(parents=True, exist_ok=True)
    image, reference = workdir / "in" / "big.png", workdir / "ref" / "big.png"
    image.write_bytes(to_png(low))
    reference.write_bytes(to_png(clean))
    del low, clean
    common = ["--image", str(image), "--threads", "1", *(["--model", model] if model else [])]
    out = {"size": f"{width}x{height}", "megapixels": width * height / 1e6, "png_bytes": image.stat().st_size}
    out["pipeline"] = run_json_subprocess(
        ["benchmarks.memory", "--mode", "pipeline", "--output", str(workdir / "out-pipeline"), *common],
        env_extra=LLIE_WORKER_ENV,
        via_shell=True,
    )
    if not archive_path:
        return out
    out["archive_with_reference"] = run_json_subprocess(
        [
            "benchmarks.memory",
            "--mode",
            "archive",
            "--output",
            str(workdir / "out-archive"),
            "--reference",
            str(reference),
            *common,
        ],
        env_extra=LLIE_WORKER_ENV,
        via_shell=True,
    )
    return out


if __name__ == "__main__":
    child_main()
