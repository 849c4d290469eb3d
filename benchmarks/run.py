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


def _run_section(section: str, plan: Plan, enhancer, work: Path, model: str | None, api=None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    if section == "stages":
        from .stages import Size, stage_throughput

        return {
            "torch_threads": set_torch_threads(cpu_count()),
            "sizes": {
                name: stage_throughput(enhancer, Size(name, w, h), repeats=r, n_images=n)
                for name, w, h, n, r in plan.stage_sizes
            },
        }
    if section == "pipeline":
        from .command_line import command_line_throughput
        from .stages import Size, pipeline_throughput

        w, h, n, passes = plan.pipeline
        return {
            "torch_threads": set_torch_threads(cpu_count()),
            **pipeline_throughput(enhancer, Size("p", w, h), n, passes, cores=cpu_count()),
            "command_line": command_line_throughput(*plan.command_line),
        }
    if section == "large":
        from .large import large_photos

        return {
            "torch_threads": set_torch_threads(cpu_count()),
            **large_photos(
                enhancer,
                plan.large_sizes,
                plan.consistency,
                cores=cpu_count(),
                startup_repeats=plan.startup_repeats,
                cli_images=plan.cli_images,
            ),
        }
    if section == "quality":
        from .quality import quality

        set_torch_threads(cpu_count())
        return quality(model, max_pairs=plan.quality_pairs)
    if section == "memory":
        from .memory import peak_rss

        return peak_rss(work, *plan.memory, model=model, archive_path=plan.memory_archive_path)
    if section == "scaling":
        from .orchestration import scaling

        n, shard, w, h, rounds = plan.scaling
        return scaling(work, n, shard, w, h, model=model, one_cluster=plan.scaling_one_cluster, rounds=rounds)
    if section == "orchestration":
        from .orchestration import flow_overhead
        from .prefect_api import TemporaryPrefectAPI

        n, shard, w, h = plan.orchestration
        background = api is not None
        api = api or TemporaryPrefectAPI().start()
        try:
            with api.settings():
                result = flow_overhead(
                    work,
                    n,
                    shard,
                    w,
                    h,
                    model=model,
                    warmup_run=plan.flow_warmup_run,
                    multiple=plan.flow_multiple,
                    malloc_images=plan.malloc_images,
                    loop_in_process=plan.loop_in_process,
                )
        finally:
            if not background:
                api.stop()
        result["prefect_api_start_s"] = api.start_seconds
        result["prefect_api"] = (
            "Prefect's ephemeral API server (SubprocessASGIServer, SQLite under a temporary PREFECT_HOME), "
            + ("started in the background at the beginning of the run" if background else "started before the timings")
        )
        return result
    raise ValueError(f"unknown section {section!r}")


def write_results(results: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    for path, text in (
        (json_path, json.dumps(results, indent=2, sort_keys=False, default=str) + "\n"),
        (md_path, render_markdown(results)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
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
