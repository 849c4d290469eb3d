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


def time_loop(
    input_dir: str,
    output: str,
    warm_input: str,
    shard_size: int,
    threads: int = 1,
    model: str | None = None,
    reference: str | None = None,
    limit: int | None = None,
) -> dict:
    """Time process_shard over shards of ``shard_size`` (what the loop subprocess runs)."""
    from llie.batch import archive
    from llie.batch.spec import RunSpec

    setup = worker_setup(model, threads, warm_input, output + "-warm")
    names = sorted(q.name for q in Path(input_dir).iterdir())[:limit]
    shards = archive.plan_shards(names, shard_size)
    per_shard, per_shard_image_seconds, all_rows = [], [], []
    for shard in shards:
        t = time.perf_counter()
        rows = archive.process_shard(RunSpec(input_dir, output, reference_url=reference), shard, _ENHANCER)
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
    print(
        json.dumps(time_loop(a.input, a.output, a.warm_input, a.shard_size, a.threads, a.model, a.reference, a.limit))
    )


# --------------------------------------------------------------------------- orchestration overhead


def flow_overhead(
    workdir: Path,
    n_images: int,
    shard_size: int,
    width: int,
    height: int,
    model: str | None = None,
    with_reference: bool = True,
    warmup_run: bool = True,
    multiple: int = 4,
    malloc_images: int = 16,
    loop_in_process: bool = False,
) -> dict:
    """Flow vs plain loop on N and kN images (k = ``multiple``; the first N shared). Needs a Prefect API.

    With ``multiple`` below 2 (quick runs) the flow runs on N images only and the steady-state split
    is not measured (None). The loop always runs 2N or kN images, as shards of N.
    """
    from flows.enhance_archive import enhance_archive
    from flows.parameters import flow_arguments
    from llie.batch import archive

    k = max(2, multiple)
    big = workdir / "k_n"
    write_images(big, k * n_images, width, height, seed=1000, with_reference=with_reference)
    small = workdir / "n"
    (small / "in").mkdir(parents=True)
    for name in sorted(p.name for p in (big / "in").iterdir())[:n_images]:
        shutil.copy(big / "in" / name, small / "in" / name)
    warm = workdir / "warm"
    write_images(warm, 1, width, height, seed=999)
    ref = str(big / "ref") if with_reference else None

    def run_loop(env: dict[str, str], output: str, limit: int | None = None, shard: int = n_images) -> dict:
        return run_json_subprocess(
            [
                "benchmarks.orchestration",
                "loop",
                "--input",
                str(big / "in"),
                "--output",
                str(workdir / output),
                "--warm-input",
                str(warm / "in"),
                "--shard-size",
                str(shard),
                "--threads",
                "1",
                *(["--reference", ref] if ref else []),
                *(["--model", model] if model else []),
                *(["--limit", str(limit)] if limit else []),
            ],
            env_extra=env,
        )

    # The plain loop: one single-threaded subprocess, the kN images as k shards of N. Quick runs
    # save that process start-up and run it here, with torch at 1 thread (numpy's pools as they are).
    if loop_in_process:
        import torch

        before = torch.get_num_threads()
        try:
            loop = time_loop(str(big / "in"), str(workdir / "loop-out"), str(warm / "in"), n_images, 1, model, ref)
        finally:
            torch.set_num_threads(before)
    else:
        loop = run_loop(SINGLE_THREAD_ENV, "loop-out")
    loop_n, loop_kn = loop["shard_seconds"][0], sum(loop["shard_seconds"])
    # The same loop with the environment Dask's nanny gives its workers (MALLOC_TRIM_THRESHOLD_) and with
    # the one llie's flow gives them (plus a fixed mmap threshold), on a subset: how much of a worker's
    # per-image cost is that one variable, not Prefect or Dask at work, and whether the fix holds.
    malloc = None
    if malloc_images:
        subset = min(malloc_images, k * n_images)
        loop_dask_env = run_loop(DASK_WORKER_ENV, "loop-dask-env-out", limit=subset, shard=subset)
        loop_llie_env = run_loop(LLIE_WORKER_ENV, "loop-llie-env-out", limit=subset, shard=subset)
        loop_plain_subset = run_loop(SINGLE_THREAD_ENV, "loop-plain-subset-out", limit=subset, shard=subset)
        malloc = {
            "images": subset,
            "plain_s": loop_plain_subset["shard_seconds"][0],
            "dask_worker_env_s": loop_dask_env["shard_seconds"][0],
            "llie_worker_env_s": loop_llie_env["shard_seconds"][0],
            "dask_env": {k: v for k, v in DASK_WORKER_ENV.items() if k.startswith("MALLOC")},
            "llie_env": {k: v for k, v in LLIE_WORKER_ENV.items() if k.startswith("MALLOC")},
        }
        malloc["slowdown_pct"] = (malloc["dask_worker_env_s"] / malloc["plain_s"] - 1.0) * 100.0
        malloc["llie_slowdown_pct"] = (malloc["llie_worker_env_s"] / malloc["plain_s"] - 1.0) * 100.0

    def run_flow(input_dir: Path, tag: str) -> dict:
        kwargs = dict(
            input_url=str(input_dir),
            output_url=str(workdir / f"flow-{tag}"),
            model=model,
            shard_size=shard_size,
            reference_url=ref,
            n_workers=1,
            run_id=f"bench-{tag}",
            retries=0,
            torch_threads=1,
        )
        t = time.perf_counter()
        summary = enhance_archive(**flow_arguments(**kwargs))
        wall = time.perf_counter() - t
        assert summary["ok"] == summary["images"], summary
        rows = archive.read_metrics(kwargs["output_url"], kwargs["run_id"]).to_pylist()
        return {
            "wall_s": wall,
            "flow_reported_s": summary.get("seconds"),
            "images": summary["images"],
            "shards": summary["shards"],
            "image_seconds": _image_seconds(rows),
            "stage_seconds": _stage_seconds(rows),
        }

    # First flow run in this process: one-time client/registration costs, reported, not used.
    first = run_flow(warm / "in", "warmup") if warmup_run else None
    flow_n = run_flow(small / "in", "n")
    flow_kn = run_flow(big / "in", "kn") if multiple >= 2 else None

    out = {
        "images": n_images,
        "multiple": k,
        "shard_size": shard_size,
        "size": f"{width}x{height}",
        "with_reference": with_reference,
        "torch_threads": 1,
        "dask": "LocalCluster, 1 worker process x 1 thread (started by the flow each run)",
        "loop": {
            "n_s": loop_n,
            "k_n_s": loop_kn,
            "model_load_s": loop["load_s"],
            "per_image_s": loop_kn / (k * n_images),
            "image_seconds_k_n": loop["image_seconds"],
            "stage_seconds_k_n": loop["stage_seconds"],
            "torch_threads": loop["torch_threads"],
            "where": "benchmark process (quick run)" if loop_in_process else "single-threaded subprocess",
        },
        "flow": {"first_run_1_image": first, "n": flow_n, "k_n": flow_kn},
        "malloc_trim_threshold_effect": malloc,
        "overhead_pct": (flow_n["wall_s"] / loop_n - 1.0) * 100.0,
        "overhead_pct_k_n": None,
        "steady_state_overhead_pct": None,
        "fixed_startup_s": None,
        "worker_compute_vs_loop_pct": (flow_n["image_seconds"] / loop["image_seconds_n"] - 1.0) * 100.0,
    }
    if first is not None:
        # A second, less noisy split: a 1-image flow run is nearly all start-up.
        fixed = first["wall_s"] - loop_kn / (k * n_images)
        out["fixed_startup_from_1_image_s"] = fixed
        out["overhead_excluding_startup_pct"] = ((flow_n["wall_s"] - fixed) / loop_n - 1.0) * 100.0
    if flow_kn is not None:
        marginal_flow = flow_kn["wall_s"] - flow_n["wall_s"]
        marginal_loop = loop_kn - loop_n
        out.update(
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
    return out


# --------------------------------------------------------------------------- scaling


def scaling(
    workdir: Path,
    n_images: int,
    shard_size: int,
    width: int,
    height: int,
    workers: tuple[int, ...] = (1, 2),
    model: str | None = None,
    with_reference: bool = True,
    one_cluster: bool = False,
    rounds: int = 3,
) -> dict:
    """Throughput of client.map over shards on LocalClusters of 1 and 2 single-threaded workers.

    All clusters stay up for the whole section and the worker counts take turns, ``rounds`` times,
    so a burst of load from elsewhere on the machine hits one round, not one worker count. The
    speed-up uses each count's best round (least disturbed); the median-based one is reported too.
    """
    import statistics
    from contextlib import ExitStack

    from distributed import Client, LocalCluster

    from flows.worker_env import local_cluster_settings
    from llie.batch import archive

    data = workdir / "scaling"
    write_images(data, n_images, width, height, seed=2000, with_reference=with_reference)
    warm = workdir / "scaling-warm"
    write_images(warm, 1, width, height, seed=1999)
    shards = archive.plan_shards(sorted(p.name for p in (data / "in").iterdir()), shard_size)
    ref = str(data / "ref") if with_reference else None

    def cluster(k: int) -> LocalCluster:
        # started like the flow's own LocalCluster (worker_env), so this measures what a run gets
        return LocalCluster(
            n_workers=k, threads_per_worker=1, processes=True, dashboard_address=":0", env=dict(SINGLE_THREAD_ENV)
        )

    with ExitStack() as stack:
        stack.enter_context(local_cluster_settings())
        # (client, pinned worker addresses or None) per worker count
        targets: dict[int, tuple[Client, list[str] | None]] = {}
        if one_cluster:
            # quick runs: one cluster of max(workers), smaller counts pinned to a subset of its workers
            client = stack.enter_context(Client(stack.enter_context(cluster(max(workers)))))
            client.wait_for_workers(max(workers))
            addresses = sorted(client.scheduler_info()["workers"])
            targets = {k: (client, addresses[:k]) for k in workers}
        else:
            for k in workers:
                client = stack.enter_context(Client(stack.enter_context(cluster(k))))
                client.wait_for_workers(k)
                targets[k] = (client, None)
        threads = {}
        for k, (client, pin) in targets.items():
            setup = client.run(
                worker_setup, model, 1, str(warm / "in"), str(workdir / f"scaling-warm-{k}"), workers=pin
            )
            threads[k] = sorted({v["torch_threads"] for v in setup.values()})

        runs: dict[int, list[dict]] = {k: [] for k in workers}
        for _round in range(rounds):
            for k in workers:
                client, pin = targets[k]
                t = time.perf_counter()
                futures = client.map(
                    run_shard,
                    shards,
                    input_url=str(data / "in"),
                    output_url=str(workdir / f"scaling-out-{k}"),
                    reference_url=ref,
                    pure=False,
                    workers=pin,
                    allow_other_workers=False,
                )
                done = client.gather(futures)
                wall = time.perf_counter() - t
                busy: dict[int, float] = {}
                for d in done:
                    busy[d["pid"]] = busy.get(d["pid"], 0.0) + d["seconds"]
                runs[k].append(
                    {
                        "wall_s": wall,
                        "busy_s_per_worker": sorted(busy.values()),
                        "shards_per_worker": sorted(sum(1 for d in done if d["pid"] == p) for p in busy),
                    }
                )

    results = {}
    for k in workers:
        walls = [run["wall_s"] for run in runs[k]]
        best = min(range(len(walls)), key=walls.__getitem__)
        results[str(k)] = {
            "images_per_s": n_images / walls[best],
            "images_per_s_median": n_images / statistics.median(walls),
            "wall_s": walls[best],
            "wall_s_rounds": walls,
            "busy_s_per_worker": runs[k][best]["busy_s_per_worker"],
            "shards_per_worker": runs[k][best]["shards_per_worker"],
            "worker_torch_threads": threads[k],
        }
    base = results[str(workers[0])]
    out = {
        "images": n_images,
        "multiple": k,
        "shard_size": shard_size,
        "shards": len(shards),
        "size": f"{width}x{height}",
        "with_reference": with_reference,
        "rounds": rounds,
        "clusters": "one LocalCluster, tasks pinned to k of its workers"
        if one_cluster
        else "a LocalCluster(n_workers=k, threads_per_worker=1) per k, all up for the whole section",
        "workers": results,
    }
    if len(workers) > 1:
        top = results[str(workers[-1])]
        out["speedup"] = top["images_per_s"] / base["images_per_s"]
        out["speedup_median"] = top["images_per_s_median"] / base["images_per_s_median"]
    return out


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        loop_main(sys.argv[2:])
    else:
        raise SystemExit("usage: python -m benchmarks.orchestration loop --input DIR --output DIR ...")
