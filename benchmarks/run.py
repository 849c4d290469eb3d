"""``make bench``: run every benchmark section side by side, write results.json and results.md.

    python -m benchmarks.run                  # full run (~10 min on 2 cores), into benchmarks/results
    python -m benchmarks.run --quick --out /tmp/bench   # smoke run with tiny sizes (< 1 min)

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from llie import atomic

from .common import REPO, cpu_count, machine_info, other_llie_processes, set_torch_threads
from .report import evaluate_targets, render_markdown

# Nothing at import time touches the environment: Dask's spawned workers re-import this module
# (as __mp_main__), and must keep the PREFECT_API_URL the flow hands them.


def _prepare_environment() -> None:
    """Before anything imports prefect (its settings are read once per process)."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # A throwaway PREFECT_HOME keeps the benchmark's temporary API database out of ~/.prefect.
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="llie-bench-prefect-")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)  # never report into someone's real server
    # Dask worker processes must import benchmarks.* to run the shard work.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)


SECTIONS = ("stages", "pipeline", "large", "quality", "memory", "scaling", "orchestration")


@dataclass(frozen=True)
class Plan:
    stage_sizes: tuple[tuple[str, int, int, int, int], ...]  # (name, width, height, images, repeats)
    pipeline: tuple[int, int, int, int]  # width, height, images, passes
    orchestration: tuple[int, int, int, int]  # images N, shard size, width, height
    scaling: tuple[int, int, int, int, int]  # images, shard size, width, height, rounds
    memory: tuple[int, int]  # width, height
    quality_pairs: int | None
    large_sizes: tuple[tuple[str, int, int, int], ...]  # (name, width, height, repeats)
    consistency: tuple[int, int]  # width, height of the photo enhanced at full size and shrunk
    startup_repeats: int = 3
    cli_images: tuple[int, int, int] = (600, 400, 12)  # width, height, images of the `llie enhance` stage timing
    command_line: tuple[int, int, int, int] = (600, 400, 40, 2)  # width, height, images, rounds of `llie enhance`
    # quick runs trade fidelity for fewer process start-ups (each imports torch: seconds)
    flow_warmup_run: bool = True
    flow_multiple: int = 4  # the flow also runs on k x N images (k shards); below 2: N only
    malloc_images: int = 16
    loop_in_process: bool = False
    scaling_one_cluster: bool = False
    memory_archive_path: bool = True
    prefect_api_in_background: bool = False


FULL = Plan(
    stage_sizes=(("600x400", 600, 400, 4, 9),),
    pipeline=(600, 400, 12, 4),
    orchestration=(64, 64, 600, 400),
    scaling=(48, 4, 600, 400, 5),
    memory=(6000, 4000),
    quality_pairs=None,
    large_sizes=(("12MP", 4000, 3000, 3), ("24MP", 6000, 4000, 2)),
    consistency=(4000, 3000),
)
QUICK = Plan(
    stage_sizes=(("600x400", 600, 400, 1, 1), ("large (quick: 800x600)", 800, 600, 1, 1)),
    pipeline=(600, 400, 1, 1),
    orchestration=(8, 8, 160, 120),
    scaling=(8, 2, 160, 120, 1),
    memory=(640, 480),
    quality_pairs=1,
    large_sizes=(("large (quick: 1200x900)", 1200, 900, 1),),
    consistency=(1200, 900),
    startup_repeats=1,
    cli_images=(160, 120, 2),
    command_line=(160, 120, 2, 1),
    flow_warmup_run=False,
    flow_multiple=0,
    malloc_images=0,  # two more subprocess start-ups: skipped
    loop_in_process=True,
    scaling_one_cluster=True,
    memory_archive_path=False,
    prefect_api_in_background=True,
)


def _model_info(enhancer) -> dict:
    manifest = enhancer.bundle.manifest
    training = manifest.get("training", {})
    return {
        "bundle": "shipped default (Enhancer.load(None))",
        "model_version": enhancer.model_version,
        "created": manifest.get("created"),
        "refiner": manifest.get("refiner"),
        "mapping": manifest.get("mapping"),
        "training_pairs": training.get("pairs"),
        "quantile_trees": (training.get("config", {}).get("quantile") or {}).get("n_estimators"),
        "device": str(enhancer.device),
    }


def run(plan: Plan, out: Path, quick: bool, model: str | None, sections: tuple[str, ...]) -> dict:
    from tqdm.auto import tqdm

    from llie.method.pipeline import Enhancer

    cores = cpu_count()
    started = time.perf_counter()
    results: dict = {
        "schema": 1,
        "quick": quick,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *sys.argv[1:]]),
        "machine": machine_info(),
    }
    threads = set_torch_threads(cores)
    enhancer = Enhancer.load(model, threads=cores)
    results["model"] = _model_info(enhancer)
    if model:
        results["model"]["bundle"] = model
    results["threads"] = {
        "single_process_sections": threads,
        "note": f"stages, pipeline and quality run in this process with torch threads = cores ({threads}); "
        "orchestration, scaling and memory run 1 torch thread per worker process "
        "(OMP/MKL/OPENBLAS_NUM_THREADS=1, as Dask's nanny sets for its workers; the scaling clusters and the "
        "memory probe also get the malloc settings the flow gives its workers, the plain loop does not)",
    }
    work = Path(tempfile.mkdtemp(prefix="llie-bench-"))
    durations = {}
    api = None
    if "orchestration" in sections and plan.prefect_api_in_background:
        from .prefect_api import TemporaryPrefectAPI

        api = TemporaryPrefectAPI().start(background=True)
    try:
        bar = tqdm(sections, desc="benchmarks", unit="section", file=sys.stderr)
        for section in bar:
            bar.set_postfix_str(section)
            t = time.perf_counter()
            results[section] = _run_section(section, plan, enhancer, work / section, model, api)
            durations[section] = time.perf_counter() - t
    finally:
        if api is not None:
            api.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["section_seconds"] = durations
    results["total_seconds"] = time.perf_counter() - started
    results["machine"]["concurrent_training_processes_at_end"] = other_llie_processes()
    results["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["targets"] = evaluate_targets(results)
    return results


@dataclass(frozen=True)
class _Section:
    """What every section may use: the plan, the loaded model (and its bundle path), a work folder."""

    plan: Plan
    enhancer: object
    work: Path
    model: str | None
    api: object = None  # a Prefect API started in the background, for the orchestration section


def _run_section(section: str, plan: Plan, enhancer, work: Path, model: str | None, api=None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if section not in _SECTION_RUNNERS:
        raise ValueError(f"unknown section {section!r}")
    return _SECTION_RUNNERS[section](_Section(plan, enhancer, work, model, api))


def _stages(s: _Section) -> dict:
    from .stages import Size, stage_throughput

    return {
        "torch_threads": set_torch_threads(cpu_count()),
        "sizes": {
            name: stage_throughput(s.enhancer, Size(name, w, h), repeats=r, n_images=n)
            for name, w, h, n, r in s.plan.stage_sizes
        },
    }


def _pipeline(s: _Section) -> dict:
    from .command_line import command_line_throughput
    from .stages import Size, pipeline_throughput

    w, h, n, passes = s.plan.pipeline
    return {
        "torch_threads": set_torch_threads(cpu_count()),
        **pipeline_throughput(s.enhancer, Size("p", w, h), n, passes, cores=cpu_count()),
        "command_line": command_line_throughput(*s.plan.command_line),
    }


def _large(s: _Section) -> dict:
    from .large import large_photos

    return {
        "torch_threads": set_torch_threads(cpu_count()),
        **large_photos(
            s.enhancer,
            s.plan.large_sizes,
            s.plan.consistency,
            cores=cpu_count(),
            startup_repeats=s.plan.startup_repeats,
            cli_images=s.plan.cli_images,
        ),
    }


def _quality(s: _Section) -> dict:
    from .quality import quality

    set_torch_threads(cpu_count())
    return quality(s.model, max_pairs=s.plan.quality_pairs)


def _memory(s: _Section) -> dict:
    from .memory import peak_rss

    return peak_rss(s.work, *s.plan.memory, model=s.model, archive_path=s.plan.memory_archive_path)


def _scaling(s: _Section) -> dict:
    from .orchestration import ScalingOptions, Workload, scaling

    n, shard, w, h, rounds = s.plan.scaling
    options = ScalingOptions(one_cluster=s.plan.scaling_one_cluster, rounds=rounds)
    return scaling(s.work, Workload(n, shard, w, h, model=s.model), options)


def _orchestration(s: _Section) -> dict:
    from .orchestration import OverheadOptions, Workload, flow_overhead
    from .prefect_api import TemporaryPrefectAPI

    n, shard, w, h = s.plan.orchestration
    options = OverheadOptions(
        s.plan.flow_warmup_run, s.plan.flow_multiple, s.plan.malloc_images, s.plan.loop_in_process
    )
    background = s.api is not None
    api = s.api or TemporaryPrefectAPI().start()
    try:
        with api.settings():
            result = flow_overhead(s.work, Workload(n, shard, w, h, model=s.model), options)
    finally:
        if not background:
            api.stop()
    result["prefect_api_start_s"] = api.start_seconds
    result["prefect_api"] = (
        "Prefect's ephemeral API server (SubprocessASGIServer, SQLite under a temporary PREFECT_HOME), "
        + ("started in the background at the beginning of the run" if background else "started before the timings")
    )
    return result


_SECTION_RUNNERS = {
    "stages": _stages,
    "pipeline": _pipeline,
    "large": _large,
    "quality": _quality,
    "memory": _memory,
    "scaling": _scaling,
    "orchestration": _orchestration,
}


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    for path, text in (
        (json_path, json.dumps(results, indent=2, sort_keys=False, default=str) + "\n"),
        (md_path, render_markdown(results)),
    ):
        atomic.write_bytes(path, text.encode())
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke run of every section")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for results.json/.md")
    p.add_argument("--model", default=None, help="bundle directory (default: the shipped model, Enhancer.load(None))")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    a = p.parse_args(argv)
    _prepare_environment()
    sections = tuple(s.strip() for s in a.sections.split(",") if s.strip())
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections: {', '.join(unknown)}")
    busy = other_llie_processes()
    if busy:
        print(f"warning: {len(busy)} llie training process(es) running; numbers will be slower", file=sys.stderr)
    try:
        results = run(QUICK if a.quick else FULL, a.out, a.quick, a.model, sections)
    finally:
        shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)
    json_path, md_path = write_results(results, a.out)
    print(render_markdown(results))
    print(f"\nwrote {json_path} and {md_path} in {results['total_seconds']:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
