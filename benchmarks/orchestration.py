"""What Prefect + Dask cost on top of the shard work, and what a second worker buys.

* overhead: the real ``flows.enhance_archive.enhance_archive`` flow (1 worker, 1 thread) against a
  plain loop over ``llie.batch.archive.process_shard`` (1 thread, in a subprocess with the same thread
  environment a Dask worker gets), both on N and kN images (k shards of N), so fixed start-up
  (cluster, worker imports, model load, shutdown, report) and the cost per shard can be told apart;
* scaling: the same shard work (pure llie, model loaded once per worker) through ``client.map``
  on LocalClusters of 1 and 2 single-threaded workers.

The loop side runs as ``python -m benchmarks.orchestration loop ...`` (a JSON line on stdout).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .common import DASK_WORKER_ENV, LLIE_WORKER_ENV, SINGLE_THREAD_ENV, run_json_subprocess, write_images

# --------------------------------------------------------------------------- worker-side code
# Runs inside Dask workers (and the loop subprocess): pure llie, one Enhancer per process.

_ENHANCER = None


def _worker_enhancer(bundle: str | None = None, threads: int = 1):
    global _ENHANCER
    if _ENHANCER is None:
        from llie.method.pipeline import Enhancer, set_threads

        set_threads(threads)
        _ENHANCER = Enhancer.load(bundle, threads=threads)
    return _ENHANCER


def worker_setup(bundle: str | None, threads: int, warm_input_url: str, warm_output_url: str) -> dict:
    """Load the model and enhance one image, so first-call costs stay out of the timed work."""
    import os

    from llie.batch import archive
    from llie.batch.spec import RunSpec

    t = time.perf_counter()
    enhancer = _worker_enhancer(bundle, threads)
    loaded = time.perf_counter() - t
    names = sorted(p.name for p in Path(warm_input_url).iterdir())[:1]
    archive.process_shard(RunSpec(warm_input_url, warm_output_url), archive.plan_shards(names, 1)[0], enhancer)
    import torch

    return {"pid": os.getpid(), "load_s": loaded, "torch_threads": torch.get_num_threads()}


def run_shard(shard, input_url: str, output_url: str, reference_url: str | None) -> dict:
    import os

    from llie.batch import archive
    from llie.batch.spec import RunSpec

    enhancer = _worker_enhancer()
    t = time.perf_counter()
    rows = archive.process_shard(RunSpec(input_url, output_url, reference_url=reference_url), shard, enhancer)
    bad = [r["error"] for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"{shard.shard_id}: {bad[:3]}")
    return {"images": len(rows), "seconds": time.perf_counter() - t, "pid": os.getpid()}


def _image_seconds(rows) -> float:
    from llie.batch import archive

    return float(sum(r.get(f"sec_{s}") or 0.0 for r in rows for s in archive.STAGES))


def _stage_seconds(rows) -> dict[str, float]:
    """Per-stage sums of the rows' timings: where a slower worker loses its time."""
    from llie.batch import archive

    return {s: float(sum(r.get(f"sec_{s}") or 0.0 for r in rows)) for s in archive.STAGES}


@dataclass(frozen=True)
class LoopRun:
    """process_shard over the images of ``input_dir`` in shards of ``shard_size`` (the loop subprocess)."""

    input_dir: str
    output: str
    warm_input: str  # one image enhanced first, so first-call costs stay out of the timings
    shard_size: int
    threads: int = 1
    model: str | None = None
    reference: str | None = None
    limit: int | None = None  # only the first LIMIT images


def time_loop(run: LoopRun) -> dict:
    """Time process_shard over shards of ``run.shard_size`` (what the loop subprocess runs)."""
    from llie.batch import archive
    from llie.batch.spec import RunSpec

    setup = worker_setup(run.model, run.threads, run.warm_input, run.output + "-warm")
    names = sorted(q.name for q in Path(run.input_dir).iterdir())[: run.limit]
    shards = archive.plan_shards(names, run.shard_size)
    per_shard, per_shard_image_seconds, all_rows = [], [], []
    for shard in shards:
        t = time.perf_counter()
        rows = archive.process_shard(RunSpec(run.input_dir, run.output, reference_url=run.reference), shard, _ENHANCER)
        per_shard.append(time.perf_counter() - t)
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
        per_shard_image_seconds.append(_image_seconds(rows))
        all_rows += rows
    return {
        **setup,
        "shard_seconds": per_shard,
        "image_seconds": sum(per_shard_image_seconds),
        "image_seconds_n": per_shard_image_seconds[0],
        "stage_seconds": _stage_seconds(all_rows),
        "images": len(names),
    }


def loop_main(argv: list[str] | None = None) -> None:
    """Subprocess entry: time process_shard over shards of ``--shard-size``, print JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--reference")
    p.add_argument("--warm-input", required=True)
    p.add_argument("--shard-size", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model")
    p.add_argument("--limit", type=int, help="only the first LIMIT images")
    a = p.parse_args(argv)
    run = LoopRun(a.input, a.output, a.warm_input, a.shard_size, a.threads, a.model, a.reference, a.limit)
    print(json.dumps(time_loop(run)))


# --------------------------------------------------------------------------- orchestration overhead


@dataclass(frozen=True)
class Workload:
    """The synthetic images a section times, and the model that enhances them."""

    n_images: int
    shard_size: int
    width: int
    height: int
    model: str | None = None
    with_reference: bool = True  # score every output against a reference (PSNR/SSIM), as an audit run does


@dataclass(frozen=True)
class OverheadOptions:
    """What the overhead section measures besides flow against loop on N images."""

    warmup_run: bool = True  # a first 1-image flow run, reported, not used
    multiple: int = 4  # the flow also runs on k x N images (k shards); below 2: N only
    malloc_images: int = 16  # the loop under Dask's and the flow's worker environments, on this many; 0: not
    loop_in_process: bool = False  # quick runs: the loop in this process, saving a process start-up


@dataclass(frozen=True)
class _Inputs:
    workdir: Path
    big: Path  # kN images (k shards of N), the loop's
    small: Path  # the first N of them
    warm: Path  # one image to warm up on
    ref: str | None
    work: Workload

    @classmethod
    def write(cls, workdir: Path, work: Workload, k: int) -> _Inputs:
        big = workdir / "k_n"
        write_images(big, k * work.n_images, work.width, work.height, seed=1000, with_reference=work.with_reference)
        small = workdir / "n"
        (small / "in").mkdir(parents=True)
        for name in sorted(p.name for p in (big / "in").iterdir())[: work.n_images]:
            shutil.copy(big / "in" / name, small / "in" / name)
        warm = workdir / "warm"
        write_images(warm, 1, work.width, work.height, seed=999)
        return cls(workdir, big, small, warm, str(big / "ref") if work.with_reference else None, work)

    def loop_run(self, output: str, limit: int | None = None, shard: int | None = None) -> LoopRun:
        return LoopRun(
            str(self.big / "in"),
            str(self.workdir / output),
            str(self.warm / "in"),
            shard or self.work.n_images,
            1,
            self.work.model,
            self.ref,
            limit,
        )


def _loop_in_subprocess(run: LoopRun, env: dict[str, str]) -> dict:
    args = ["--input", run.input_dir, "--output", run.output, "--warm-input", run.warm_input]
    args += ["--shard-size", str(run.shard_size), "--threads", str(run.threads)]
    args += [*(["--reference", run.reference] if run.reference else []), *(["--model", run.model] if run.model else [])]
    args += ["--limit", str(run.limit)] if run.limit else []
    return run_json_subprocess(["benchmarks.orchestration", "loop", *args], env_extra=env)


def _plain_loop(inputs: _Inputs, in_process: bool) -> dict:
    """The kN images as k shards of N in one single-threaded subprocess; quick runs save that process
    start-up and run it here, with torch at 1 thread (numpy's pools as they are)."""
    if not in_process:
        return _loop_in_subprocess(inputs.loop_run("loop-out"), SINGLE_THREAD_ENV)
    import torch

    before = torch.get_num_threads()
    try:
        return time_loop(inputs.loop_run("loop-out"))
    finally:
        torch.set_num_threads(before)


def _malloc_effect(inputs: _Inputs, subset: int) -> dict:
    """The loop with the environment Dask's nanny gives its workers (MALLOC_TRIM_THRESHOLD_) and with the one
    llie's flow gives them, on a subset: how much of a worker's per-image cost is that one variable, not
    Prefect or Dask at work, and whether the fix holds."""
    seconds = {
        key: _loop_in_subprocess(inputs.loop_run(output, limit=subset, shard=subset), env)["shard_seconds"][0]
        for key, output, env in (
            ("dask_worker_env_s", "loop-dask-env-out", DASK_WORKER_ENV),
            ("llie_worker_env_s", "loop-llie-env-out", LLIE_WORKER_ENV),
            ("plain_s", "loop-plain-subset-out", SINGLE_THREAD_ENV),
        )
    }
    malloc = {
        "images": subset,
        "plain_s": seconds["plain_s"],
        "dask_worker_env_s": seconds["dask_worker_env_s"],
        "llie_worker_env_s": seconds["llie_worker_env_s"],
        "dask_env": {k: v for k, v in DASK_WORKER_ENV.items() if k.startswith("MALLOC")},
        "llie_env": {k: v for k, v in LLIE_WORKER_ENV.items() if k.startswith("MALLOC")},
    }
    malloc["slowdown_pct"] = (malloc["dask_worker_env_s"] / malloc["plain_s"] - 1.0) * 100.0
    malloc["llie_slowdown_pct"] = (malloc["llie_worker_env_s"] / malloc["plain_s"] - 1.0) * 100.0
    return malloc


def _run_flow(inputs: _Inputs, input_dir: Path, tag: str) -> dict:
    """The enhance_archive flow on ``input_dir``, 1 worker x 1 thread: its wall time and per-image work."""
    from flows.enhance_archive import enhance_archive
    from flows.parameters import flow_arguments
    from llie.batch import archive

    output_url, run_id = str(inputs.workdir / f"flow-{tag}"), f"bench-{tag}"
    kwargs = dict(
        input_url=str(input_dir),
        output_url=output_url,
        model=inputs.work.model,
        shard_size=inputs.work.shard_size,
        reference_url=inputs.ref,
        n_workers=1,
        run_id=run_id,
        retries=0,
        torch_threads=1,
    )
    t = time.perf_counter()
    summary = enhance_archive(**flow_arguments(**kwargs))
    wall = time.perf_counter() - t
    assert summary["ok"] == summary["images"], summary
    rows = archive.read_metrics(output_url, run_id).to_pylist()
    return {
        "wall_s": wall,
        "flow_reported_s": summary.get("seconds"),
        "images": summary["images"],
        "shards": summary["shards"],
        "image_seconds": _image_seconds(rows),
        "stage_seconds": _stage_seconds(rows),
    }


def flow_overhead(workdir: Path, work: Workload, options: OverheadOptions = OverheadOptions()) -> dict:
    """Flow vs plain loop on N and kN images (k = ``options.multiple``; the first N shared). Needs a Prefect API.

    With ``multiple`` below 2 (quick runs) the flow runs on N images only and the steady-state split
    is not measured (None). The loop always runs 2N or kN images, as shards of N.
    """
    k = max(2, options.multiple)
    inputs = _Inputs.write(workdir, work, k)
    loop = _plain_loop(inputs, options.loop_in_process)
    malloc = _malloc_effect(inputs, min(options.malloc_images, k * work.n_images)) if options.malloc_images else None
    # First flow run in this process: one-time client/registration costs, reported, not used.
    first = _run_flow(inputs, inputs.warm / "in", "warmup") if options.warmup_run else None
    flow_n = _run_flow(inputs, inputs.small / "in", "n")
    flow_kn = _run_flow(inputs, inputs.big / "in", "kn") if options.multiple >= 2 else None
    loop_n, loop_kn = loop["shard_seconds"][0], sum(loop["shard_seconds"])
    out = {
        "images": work.n_images,
        "multiple": k,
        "shard_size": work.shard_size,
        "size": f"{work.width}x{work.height}",
        "with_reference": work.with_reference,
        "torch_threads": 1,
        "dask": "LocalCluster, 1 worker process x 1 thread (started by the flow each run)",
        "loop": {
            "n_s": loop_n,
            "k_n_s": loop_kn,
            "model_load_s": loop["load_s"],
            "per_image_s": loop_kn / (k * work.n_images),
            "image_seconds_k_n": loop["image_seconds"],
            "stage_seconds_k_n": loop["stage_seconds"],
            "torch_threads": loop["torch_threads"],
            "where": "benchmark process (quick run)" if options.loop_in_process else "single-threaded subprocess",
        },
        "flow": {"first_run_1_image": first, "n": flow_n, "k_n": flow_kn},
        "malloc_trim_threshold_effect": malloc,
        "overhead_pct": (flow_n["wall_s"] / loop_n - 1.0) * 100.0,
        "overhead_pct_k_n": None,
        "steady_state_overhead_pct": None,
        "fixed_startup_s": None,
        "worker_compute_vs_loop_pct": (flow_n["image_seconds"] / loop["image_seconds_n"] - 1.0) * 100.0,
    }
    return out | _overhead_splits(out, k, first, flow_kn, loop)


def _overhead_splits(out: dict, k: int, first: dict | None, flow_kn: dict | None, loop: dict) -> dict:
    """Start-up apart from the cost per shard: from the 1-image run, and from N against kN."""
    loop_n, loop_kn, flow_n = out["loop"]["n_s"], out["loop"]["k_n_s"], out["flow"]["n"]
    splits: dict = {}
    if first is not None:
        # A second, less noisy split: a 1-image flow run is nearly all start-up.
        fixed = first["wall_s"] - loop_kn / (k * out["images"])
        splits["fixed_startup_from_1_image_s"] = fixed
        splits["overhead_excluding_startup_pct"] = ((flow_n["wall_s"] - fixed) / loop_n - 1.0) * 100.0
    if flow_kn is not None:
        marginal_flow = flow_kn["wall_s"] - flow_n["wall_s"]
        marginal_loop = loop_kn - loop_n
        splits.update(
            overhead_pct_k_n=(flow_kn["wall_s"] / loop_kn - 1.0) * 100.0,
            # time of kN minus time of N: what k-1 more shards of N images cost, start-up cancelled out
            # (k-1 shards, not one, so that run-to-run noise in start-up is spread over more work)
            steady_state_overhead_pct=(marginal_flow / marginal_loop - 1.0) * 100.0,
            # intercept of the flow's time through N and kN images: cluster start, worker imports,
            # model load, cluster shutdown, the run report
            fixed_startup_s=flow_n["wall_s"] - marginal_flow / (k - 1),
            # per-image work measured inside the worker vs inside the loop: is the worker itself slower?
            worker_compute_vs_loop_pct=(flow_kn["image_seconds"] / loop["image_seconds"] - 1.0) * 100.0,
        )
    return splits


# --------------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class ScalingOptions:
    workers: tuple[int, ...] = (1, 2)  # worker counts compared, the first the base of the speed-up
    one_cluster: bool = False  # quick runs: one cluster of max(workers), smaller counts pinned to some of it
    rounds: int = 3  # the worker counts take turns this many times


def _clusters(stack, workers: tuple[int, ...], one_cluster: bool) -> dict:
    """(client, pinned worker addresses or None) per worker count, on clusters started like the flow's own
    (flows.shards.local_cluster_kwargs, flows.worker_env), so this measures what a run gets."""
    from distributed import Client, LocalCluster

    from flows.shards import local_cluster_kwargs

    def cluster(k: int) -> LocalCluster:
        return LocalCluster(**local_cluster_kwargs(k, dict(SINGLE_THREAD_ENV)))

    if one_cluster:
        client = stack.enter_context(Client(stack.enter_context(cluster(max(workers)))))
        client.wait_for_workers(max(workers))
        addresses = sorted(client.scheduler_info()["workers"])
        return {k: (client, addresses[:k]) for k in workers}
    targets = {}
    for k in workers:
        client = stack.enter_context(Client(stack.enter_context(cluster(k))))
        client.wait_for_workers(k)
        targets[k] = (client, None)
    return targets


def _map_round(client, pin: list[str] | None, shards, inputs: dict) -> dict:
    """One pass of every shard through ``client.map``: its wall time and each worker's share."""
    t = time.perf_counter()
    futures = client.map(run_shard, shards, **inputs, pure=False, workers=pin, allow_other_workers=False)
    done = client.gather(futures)
    wall = time.perf_counter() - t
    busy: dict[int, float] = {}
    for d in done:
        busy[d["pid"]] = busy.get(d["pid"], 0.0) + d["seconds"]
    return {
        "wall_s": wall,
        "busy_s_per_worker": sorted(busy.values()),
        "shards_per_worker": sorted(sum(1 for d in done if d["pid"] == p) for p in busy),
    }


def _timed_rounds(workdir: Path, work: Workload, shards, options: ScalingOptions) -> tuple[dict, dict]:
    """(runs, torch threads) per worker count: every count's rounds, taking turns."""
    from contextlib import ExitStack

    # imported before local_cluster_settings: leaving its dask.config.set would drop the defaults the import adds
    import distributed  # noqa: F401

    from flows.worker_env import local_cluster_settings

    data, warm = workdir / "scaling", workdir / "scaling-warm"
    ref = str(data / "ref") if work.with_reference else None
    with ExitStack() as stack:
        stack.enter_context(local_cluster_settings())
        targets = _clusters(stack, options.workers, options.one_cluster)
        threads = {}
        for k, (client, pin) in targets.items():
            setup = client.run(
                worker_setup, work.model, 1, str(warm / "in"), str(workdir / f"scaling-warm-{k}"), workers=pin
            )
            threads[k] = sorted({v["torch_threads"] for v in setup.values()})
        runs: dict[int, list[dict]] = {k: [] for k in options.workers}
        for _round in range(options.rounds):
            for k in options.workers:
                inputs = {"input_url": str(data / "in"), "output_url": str(workdir / f"scaling-out-{k}")}
                runs[k].append(_map_round(*targets[k], shards, inputs | {"reference_url": ref}))
    return runs, threads


def scaling(workdir: Path, work: Workload, options: ScalingOptions = ScalingOptions()) -> dict:
    """Throughput of client.map over shards on LocalClusters of 1 and 2 single-threaded workers.

    All clusters stay up for the whole section and the worker counts take turns, ``rounds`` times,
    so a burst of load from elsewhere on the machine hits one round, not one worker count. The
    speed-up uses each count's best round (least disturbed); the median-based one is reported too.
    """
    import statistics

    from llie.batch import archive

    data = workdir / "scaling"
    write_images(data, work.n_images, work.width, work.height, seed=2000, with_reference=work.with_reference)
    write_images(workdir / "scaling-warm", 1, work.width, work.height, seed=1999)
    shards = archive.plan_shards(sorted(p.name for p in (data / "in").iterdir()), work.shard_size)
    runs, threads = _timed_rounds(workdir, work, shards, options)
    results = {}
    for k in options.workers:
        walls = [run["wall_s"] for run in runs[k]]
        best = min(range(len(walls)), key=walls.__getitem__)
        results[str(k)] = {
            "images_per_s": work.n_images / walls[best],
            "images_per_s_median": work.n_images / statistics.median(walls),
            "wall_s": walls[best],
            "wall_s_rounds": walls,
            "busy_s_per_worker": runs[k][best]["busy_s_per_worker"],
            "shards_per_worker": runs[k][best]["shards_per_worker"],
            "worker_torch_threads": threads[k],
        }
    out = {
        "images": work.n_images,
        "multiple": options.workers[-1],
        "shard_size": work.shard_size,
        "shards": len(shards),
        "size": f"{work.width}x{work.height}",
        "with_reference": work.with_reference,
        "rounds": options.rounds,
        "clusters": "one LocalCluster, tasks pinned to k of its workers"
        if options.one_cluster
        else "a LocalCluster(n_workers=k, threads_per_worker=1) per k, all up for the whole section",
        "workers": results,
    }
    if len(options.workers) > 1:
        base, top = results[str(options.workers[0])], results[str(options.workers[-1])]
        out["speedup"] = top["images_per_s"] / base["images_per_s"]
        out["speedup_median"] = top["images_per_s_median"] / base["images_per_s_median"]
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        loop_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m benchmarks.orchestration loop --input DIR --output DIR ...")
