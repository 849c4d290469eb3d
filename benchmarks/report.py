"""Targets from the issue with pass/fail, and the markdown rendering of a results dict."""

from __future__ import annotations

from dataclasses import dataclass

from llie.audit.table import Table

GIB = 2**30


def _get(results: dict, *keys):
    node = results
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


@dataclass(frozen=True)
class Target:
    """One target from the issue, as measured."""

    name: str
    threshold: str
    measured: float | None
    unit: str
    passed: bool
    source: str  # where in the results the measurement sits
    note: str = ""

    def row(self, quick: bool) -> dict:
        """``passed`` is None when the section did not run."""
        return {
            "target": self.name,
            "threshold": self.threshold,
            "measured": self.measured,
            "unit": self.unit,
            "passed": self.passed if self.measured is not None else None,
            "source": self.source,
            "note": ("quick run: sizes differ from the target's; " + self.note) if quick else self.note,
        }


def _stages_target(results: dict) -> Target:
    frac = _get(results, "pipeline", "variants", "stages_1_3", "fraction_of_pillow_io_floor")
    own = _get(results, "pipeline", "variants", "stages_1_3", "fraction_of_io_floor")
    return Target(
        "stages 1-3 throughput >= 50% of the I/O floor (Pillow decode + Pillow PNG encode at level 1)",
        ">= 0.50",
        frac,
        "x I/O floor",
        frac is not None and frac >= 0.5,
        "pipeline.variants.stages_1_3.fraction_of_pillow_io_floor",
        "decode+stages 1-3+encode images/s over Pillow decode+encode images/s (the issue's floor); "
        f"against llie's own, faster decode+encode: {_fmt(own, 2)} x",
    )


def _pipeline_target(results: dict) -> Target:
    ips = _get(results, "pipeline", "command_line", "default", "images_per_s")
    cores = _get(results, "pipeline", "cores")
    counted = _get(results, "pipeline", "variants", "full_pipeline_1_thread", "images_per_s_one_worker_per_core")
    bf16 = _get(results, "pipeline", "variants", "full_pipeline_1_thread_bf16", "images_per_s_one_worker_per_core")
    return Target(
        "full pipeline >= 6 images/s on 600x400 (CPU, all cores)",
        ">= 6.0",
        ips,
        "images/s",
        ips is not None and ips >= 6.0,
        "pipeline.command_line.default.images_per_s",
        f"`llie enhance` on {_get(results, 'pipeline', 'command_line', 'images')} photos in a fresh process, "
        "start-up subtracted, one photo per core at a time; "
        f"--workers 1 (one photo on {cores} torch threads): "
        f"{_fmt(_get(results, 'pipeline', 'command_line', 'workers_1', 'images_per_s'), 2)}; "
        f"{cores} x the one-thread pipeline in this process: {_fmt(counted, 2)}; with the refiner in bf16 "
        "(opt-in, outputs move by a level or two), by that count: "
        f"{_fmt(bf16, 2)}",
    )


def _large_target(results: dict) -> Target:
    sizes = _get(results, "large", "sizes") or {}
    first = next(iter(sizes), None)
    big = (
        _get(sizes, first, "full_threads_" + str(_get(results, "large", "torch_threads")), "seconds") if first else None
    )
    return Target(
        f"{first or '12MP'} full pipeline <= 2 s per photo (all cores)",
        "<= 2.0 s",
        big,
        "s",
        big is not None and big <= 2.0,
        f"large.sizes.{first}.full_threads_N.seconds",
        "decode + all stages + PNG encode (default compression) of one photo",
    )


def _consistency_target(results: dict) -> Target:
    psnr = _get(results, "large", "scale_consistency", "working_size_full", "psnr_db")
    return Target(
        "scale consistency: enhanced then shrunk vs shrunk then enhanced >= 30 dB",
        ">= 30 dB",
        psnr,
        "dB",
        psnr is not None and psnr >= 30.0,
        "large.scale_consistency.working_size_full.psnr_db",
        f"{_get(results, 'large', 'scale_consistency', 'size')} shrunk to 600 px on the long side",
    )


def _startup_target(results: dict) -> Target:
    start = _get(results, "large", "startup", "enhance_hist_s")
    return Target(
        "start-up of llie enhance --stages hist < 1.5 s",
        "< 1.5 s",
        start,
        "s",
        start is not None and start < 1.5,
        "large.startup.enhance_hist_s",
        "fresh process, one small photo",
    )


def _orchestration_target(results: dict) -> Target:
    # Per shard: what each further shard of 64 costs in the flow against the loop. The fixed start-up
    # per flow run is reported beside it, not folded in: it is paid once per run, whatever its size.
    steady = _get(results, "orchestration", "steady_state_overhead_pct")
    key = "steady_state_overhead_pct" if steady is not None else "overhead_pct"
    ovh = steady if steady is not None else _get(results, "orchestration", "overhead_pct")
    fixed = _get(results, "orchestration", "fixed_startup_s")
    return Target(
        f"orchestration overhead <= 10% at {_get(results, 'orchestration', 'shard_size') or 64} images per shard",
        "<= 10 %",
        ovh,
        "%",
        ovh is not None and ovh <= 10.0,
        f"orchestration.{key}",
        (
            "per shard, start-up cancelled"
            + (f"; plus {fixed:.1f} s fixed start-up per flow run" if fixed is not None else "")
        )
        if steady is not None
        else "whole flow wall time vs plain process_shard loop (quick run: start-up included)",
    )


def _scaling_target(results: dict) -> Target:
    sp = _get(results, "scaling", "speedup")
    return Target("2 workers >= 1.7x one", ">= 1.7", sp, "x", sp is not None and sp >= 1.7, "scaling.speedup")


def _memory_target(results: dict) -> Target:
    # the worst of the two worker paths: enhancing alone, and the archive's (metrics against a reference)
    rss_paths = [_get(results, "memory", path, "peak_rss_bytes") for path in ("pipeline", "archive_with_reference")]
    rss = max((r for r in rss_paths if r is not None), default=None)
    return Target(
        f"peak RSS < 2 GiB enhancing {_get(results, 'memory', 'size')}",
        "< 2.00 GiB",
        rss / GIB if rss is not None else None,
        "GiB",
        rss is not None and rss < 2 * GIB,
        "memory.*.peak_rss_bytes",
        "worst of decode+enhance+encode and the archive path, fresh worker process",
    )


_TARGETS = (
    _stages_target,
    _pipeline_target,
    _large_target,
    _consistency_target,
    _startup_target,
    _orchestration_target,
    _scaling_target,
    _memory_target,
)


def evaluate_targets(results: dict) -> list[dict]:
    """One row per target; ``passed`` is None when its section did not run."""
    quick = results.get("quick", False)
    return [target(results).row(quick) for target in _TARGETS]


def _env_text(env: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(env.items()))


def _malloc_line(m: dict | None) -> str:
    """The plain loop against the same loop under Dask's and under the flow's worker environment."""
    if not m:
        return "- malloc environment effect: not measured"
    line = (
        f"- the same loop on {m['images']} images: {_fmt(m['plain_s'])} s plain; "
        f"{_fmt(m['dask_worker_env_s'])} s (**{_fmt(m['slowdown_pct'], 1)} %**) with Dask's worker environment "
        f"({_env_text(m['dask_env'])})"
    )
    if "llie_worker_env_s" in m:
        line += (
            f"; {_fmt(m['llie_worker_env_s'])} s (**{_fmt(m['llie_slowdown_pct'], 1)} %**) with the flow's "
            f"({_env_text(m['llie_env'])})"
        )
    return line


def _fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return Table.of(header, [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]).markdown()


def _large_lines(large: dict) -> list[str]:
    threads = large["torch_threads"]
    lines = [
        "",
        f"## Large photos (decode -> enhance -> PNG encode of one synthetic photo, median of passes; "
        f"torch on {threads} threads and on 1)",
        "",
    ]
    rows = []
    for name, r in large["sizes"].items():
        for t in sorted({threads, 1}, reverse=True):
            rows.append(
                [
                    f"{name} ({r['size']}), {t} thread(s)",
                    r["io_floor_s"],
                    r[f"hist_threads_{t}"]["seconds"],
                    r[f"full_threads_{t}"]["seconds"],
                    r[f"full_threads_{t}"].get("cpu_s"),
                    r[f"full_threads_{t}"]["seconds"] / r["io_floor_s"],
                ]
            )
    lines += _table(["photo", "decode+encode s", "stages 1-3 s", "full s", "full CPU s", "full x I/O floor"], rows)
    lines.append("")
    lines.append(
        "Archive estimate (one-thread full pipeline, a Dask worker per core): "
        + "; ".join(
            f"{name}: **{r['photos_per_hour_per_core']:,.0f} photos per hour per core**"
            for name, r in large["sizes"].items()
        )
        + "."
    )
    for t in sorted({threads, 1}, reverse=True):
        parts = {name: r[f"full_threads_{t}"].get("parts_s", {}) for name, r in large["sizes"].items()}
        lines.append(
            f"Where a photo's time goes ({t} thread(s), last pass): "
            + "; ".join(
                f"{name}: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in p.items()) for name, p in parts.items()
            )
            + "."
        )
    return lines + _consistency_lines(large["scale_consistency"]) + _startup_lines(large)


def _consistency_lines(sc: dict) -> list[str]:
    """Enhanced then shrunk against shrunk then enhanced, on each path."""
    lines = [
        "",
        f"**Scale consistency** ({sc['size']} enhanced then shrunk to {sc['shrunk_to']}, against the shrunk "
        f"photo enhanced; working size {sc['working_long_side']} px):",
        "",
    ]
    rows = [
        [
            path.replace("_", " "),
            sc[f"{path}_hist"]["psnr_db"],
            sc[f"{path}_full"]["psnr_db"],
            sc[f"{path}_full"]["enhance_s"],
        ]
        for path in ("working_size", "plain")
        if f"{path}_full" in sc
    ]
    return lines + _table(["path", "stages 1-3 PSNR dB", "full PSNR dB", "full enhance s"], rows)


def _startup_lines(large: dict) -> list[str]:
    """Start-up of `llie enhance`, and each stage's time inside it."""
    st = large["startup"]
    lines = [
        "",
        f"Start-up: `llie enhance --stages hist` on one small photo {st['enhance_hist_s']:.2f} s, "
        f"`python -c 'import numpy'` {st['python_numpy_s']:.2f} s; `llie --help` imports torch: "
        f"{st['imports_torch']}. GPU: {large['gpu']['note']}.",
    ]
    cli = large.get("cli_stage_ms")
    if cli:
        lines += [
            "",
            f"Inside `llie enhance` (a fresh process as a user runs it, {cli['images']} photos of {cli['size']}, "
            "median ms per photo after the first):",
            "",
        ]
        stage_names = [k for k in ("features", "quantiles", "mapping", "refiner") if k in cli["full"]]
        lines += _table(
            ["stages", *stage_names],
            [[stages, *(cli[stages].get(k) for k in stage_names)] for stages in ("hist", "full")],
        )
    return lines


def _head_lines(results: dict) -> list[str]:
    """Title, machine, threads and model."""
    m = results.get("machine", {})
    model = results.get("model", {})
    lines = [
        f"# llie benchmark{' (quick smoke run: not comparable to the targets)' if results.get('quick') else ''}",
        "",
        f"Run {results.get('started_at')} with `{results.get('command')}` in {_fmt(results.get('total_seconds'), 0)} s.",
        "",
        f"Machine: {m.get('cores')} cores ({m.get('cpu_model')}), {m.get('memory_gib')} GiB, {m.get('platform')}; "
        f"Python {m.get('python')}, torch {m.get('versions', {}).get('torch')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start') or [])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_end') or [])} (this run itself keeps about 1-2 busy).",
        f"Threads: {results.get('threads', {}).get('note')}.",
        f"Model: {model.get('bundle')}, version `{model.get('model_version')}`, refiner {model.get('refiner')}.",
    ]
    busy = m.get("concurrent_training_processes") or m.get("concurrent_training_processes_at_end")
    if busy:
        lines.append(
            f"**Warning:** a training process was running during this run ({len(busy)}): numbers are pessimistic."
        )
    return lines


def _target_lines(results: dict) -> list[str]:
    lines = ["", "## Targets", ""]
    rows = []
    for t in results.get("targets", []):
        verdict = {True: "PASS", False: "**FAIL**", None: "not run"}[t["passed"]]
        rows.append([t["target"], t["threshold"], f"{_fmt(t['measured'])} {t['unit']}", verdict])
    lines += _table(["target", "threshold", "measured", "result"], rows)
    return lines


def _stages_lines(stages: dict) -> list[str]:
    """Per-stage throughput at each size."""
    lines: list[str] = []
    sizes = stages["sizes"]
    names = list(sizes)
    lines += ["", f"## Per stage (one process, {stages['torch_threads']} torch threads; median of repeats)", ""]
    header = (
        ["stage"] + [f"{n}: MP/s" for n in names] + [f"{n}: ms/image" for n in names] + [f"{n}: share" for n in names]
    )
    rows = []
    for stage in sizes[names[0]]["stages"]:
        r = [stage]
        r += [sizes[n]["stages"][stage]["megapixels_per_s"] for n in names]
        r += [sizes[n]["stages"][stage]["ms_per_image"] for n in names]
        r += [f"{sizes[n]['stages'][stage]['share_of_total'] * 100:.0f}%" for n in names]
        rows.append(r)
    rows.append(
        ["**sum**"]
        + [sizes[n]["megapixels"] / sizes[n]["sum_ms_per_image"] * 1e3 for n in names]
        + [sizes[n]["sum_ms_per_image"] for n in names]
        + ["100%" for _ in names]
    )
    lines += _table(header, rows)
    lines.append("")
    lines.append(
        "Sizes: "
        + "; ".join(
            f"{n} = {sizes[n]['size']} ({sizes[n]['megapixels']:.2f} MP, {sizes[n]['images']} image(s), "
            f"{sizes[n]['stages']['decode']['repeats']} repeats, PNG {sizes[n]['png_bytes_per_image'] / 1e6:.2f} MB)"
            for n in names
        )
        + ". `metrics` = no-reference stats of input and output + PSNR + SSIM against the clean image."
    )
    return lines


def _pipeline_lines(pipe: dict) -> list[str]:
    """Whole-pipeline throughput, and `llie enhance` as a user runs it."""
    lines: list[str] = []
    lines += [
        "",
        f"## Pipeline on {pipe['size']} (decode -> X -> PNG encode; {pipe['images']} images, "
        f"median of {pipe['passes']} interleaved passes, {pipe['torch_threads']} torch threads)",
        "",
    ]
    labels = {
        "io_floor": "I/O floor (decode+encode, llie.batch.imageio)",
        "io_floor_pillow": "I/O floor, Pillow's PNG encoder at level 1",
        "opencv_clahe": "OpenCV CLAHE on L (clip 2, 8x8)",
        "stages_1_3": 'llie stages 1-3 (stages="hist")',
        "full_pipeline": "llie full pipeline",
        "full_pipeline_1_thread": "llie full pipeline, 1 thread",
        "full_pipeline_1_thread_bf16": "llie full pipeline, 1 thread, refiner in bf16 (opt-in)",
    }
    rows = [
        [
            labels.get(k, k),
            v.get("threads", pipe["torch_threads"]),
            v["images_per_s"],
            v["ms_per_image"],
            v.get("cpu_ms_per_image"),
            v["fraction_of_io_floor"],
            v.get("fraction_of_pillow_io_floor"),
        ]
        for k, v in pipe["variants"].items()
    ]
    lines += _table(
        ["variant", "threads", "images/s", "ms/image", "CPU ms/image", "x I/O floor", "x Pillow I/O floor"], rows
    )
    one = pipe["variants"].get("full_pipeline_1_thread")
    if one:
        lines += [
            "",
            f"One single-threaded worker per core (the flow's layout): {pipe.get('cores')} x "
            f"{_fmt(one['images_per_s'], 2)} = **{_fmt(one['images_per_s_one_worker_per_core'], 2)} images/s** "
            "if workers scale perfectly (the scaling section measures the real speed-up, with reference metrics).",
        ]
    command = pipe.get("command_line")
    if command:
        lines.append(
            f"`llie enhance` on {command['images']} photos of {command['size']} in a fresh process, start-up "
            f"subtracted (median of {command['rounds']} rounds): **{_fmt(command['default']['images_per_s'], 2)} "
            f"images/s** with one photo per core at a time (the default), "
            f"{_fmt(command['workers_1']['images_per_s'], 2)} with `--workers 1`."
        )
    bf16 = pipe["variants"].get("full_pipeline_1_thread_bf16")
    if bf16:
        lines.append(
            f"With the refiner in bf16 (`TilingConfig(cpu_bf16=True)`, opt-in: outputs move by a level or two, "
            f"paired quality in `benchmarks/precision.py`): {pipe.get('cores')} x {_fmt(bf16['images_per_s'], 2)} = "
            f"**{_fmt(bf16['images_per_s_one_worker_per_core'], 2)} images/s**."
        )
    return lines


def _orchestration_lines(orch: dict) -> list[str]:
    """The flow against a plain loop over the same shards."""
    lines: list[str] = []
    loop, flow = orch["loop"], orch["flow"]
    lines += [
        "",
        f"## Orchestration overhead ({orch['images']} images of {orch['size']}, shard size "
        f"{orch['shard_size']}, with reference PSNR/SSIM: {orch['with_reference']})",
        "",
    ]
    k = orch.get("multiple", 2)
    k_n, first = flow["k_n"], flow["first_run_1_image"]
    rows = [
        ["plain loop over process_shard (1 thread)", loop["n_s"], loop["k_n_s"], "-"],
        [
            "enhance_archive flow (Prefect + LocalCluster 1x1)",
            flow["n"]["wall_s"],
            k_n["wall_s"] if k_n else "not run",
            first["wall_s"] if first else "not run",
        ],
    ]
    lines += _table(
        [
            "",
            f"N={orch['images']} images, 1 shard (s)",
            f"{k}N={k * orch['images']} images, {k} shards (s)",
            "first flow run, 1 image (s)",
        ],
        rows,
    )
    lines += [
        "",
        f"- **per shard (steady state: {k}N minus N, start-up cancelled): "
        f"{_fmt(orch['steady_state_overhead_pct'], 1)} %**; fixed start-up per flow run: "
        f"{_fmt(orch['fixed_startup_s'], 1)} s (cluster start, worker imports, model load, shutdown, report)",
        f"- whole run, start-up included: {_fmt(orch['overhead_pct'], 1)} % at N, "
        f"{_fmt(orch['overhead_pct_k_n'], 1)} % at {k}N",
        f"- start-up estimated from the 1-image flow run instead: {_fmt(orch.get('fixed_startup_from_1_image_s'), 1)} s; "
        f"overhead at N without it: {_fmt(orch.get('overhead_excluding_startup_pct'), 1)} %",
        f"- per-image work measured inside the worker vs inside the loop: {_fmt(orch['worker_compute_vs_loop_pct'], 1)} % "
        "(the worker's first image runs cold; the loop's was warmed up)",
        _malloc_line(orch.get("malloc_trim_threshold_effect")),
        f"- loop model load {_fmt(loop['model_load_s'])} s (not in the loop's time); Prefect API start "
        f"{_fmt(orch.get('prefect_api_start_s'), 1)} s (not in either)",
    ]
    return lines


def _scaling_lines(sc: dict) -> list[str]:
    """Throughput on 1 and 2 workers."""
    lines: list[str] = []
    lines += [
        "",
        f"## Scaling ({sc['images']} images of {sc['size']} in {sc['shards']} shards via client.map, "
        f"single-threaded workers, model loaded once per worker; best of {sc.get('rounds', 1)} interleaved rounds)",
        "",
    ]
    rows = [
        [
            k,
            v["images_per_s"],
            v.get("images_per_s_median"),
            ", ".join(f"{w:.1f}" for w in v.get("wall_s_rounds", [v["wall_s"]])),
            ", ".join(f"{b:.1f}" for b in v["busy_s_per_worker"]),
        ]
        for k, v in sc["workers"].items()
    ]
    lines += _table(
        ["workers", "images/s (best round)", "images/s (median)", "wall per round (s)", "busy s per worker (best)"],
        rows,
    )
    if "speedup" in sc:
        lines += [
            "",
            f"Speed-up: **{_fmt(sc['speedup'])}x** (best rounds); {_fmt(sc.get('speedup_median'))}x (medians)",
        ]
    return lines


def _memory_lines(mem: dict) -> list[str]:
    """Peak RSS of a fresh worker."""
    lines: list[str] = []
    lines += ["", f"## Peak RSS, one fresh worker process, {mem['size']} ({mem['megapixels']:.0f} MP)", ""]
    rows = []
    for key, label in (
        ("pipeline", "decode+enhance+encode"),
        ("archive_with_reference", "archive worker path (process_shard, with reference PSNR/SSIM)"),
    ):
        r = mem.get(key)
        if r:
            rows.append(
                [
                    label,
                    r["baseline_rss_bytes"] / GIB,
                    r["peak_rss_bytes"] / GIB,
                    r["increase_bytes"] / GIB,
                    r["seconds"],
                ]
            )
    lines += _table(["path", "baseline after imports+model (GiB)", "peak (GiB)", "increase (GiB)", "seconds"], rows)
    return lines


def _quality_lines(q: dict) -> list[str]:
    """Paired quality against the references."""
    lines: list[str] = []
    lines += ["", "## Quality"]
    if q.get("skipped"):
        lines += ["", q.get("note", "skipped")]
    else:
        lines += ["", f"{q['data']}, {q['pairs']} pairs, {q['protocol']}; model `{q['model_version']}`.", ""]
        interval = lambda v: f"{v[0]:.2f} to {v[1]:.2f}" if v else "n/a"
        rows = [[k, v["psnr"], interval(v.get("psnr_interval")), f"{v['ssim']:.3f}"] for k, v in q["methods"].items()]
        lines += _table(["method", "PSNR (dB)", "PSNR 95% interval (bootstrap over images)", "SSIM"], rows)
    return lines


_SECTIONS = (
    ("stages", _stages_lines),
    ("pipeline", _pipeline_lines),
    ("large", _large_lines),
    ("orchestration", _orchestration_lines),
    ("scaling", _scaling_lines),
    ("memory", _memory_lines),
    ("quality", _quality_lines),
)


def render_markdown(results: dict) -> str:
    lines = _head_lines(results) + _target_lines(results)
    for key, render in _SECTIONS:
        if results.get(key):
            lines += render(results[key])
    secs = results.get("section_seconds")
    if secs:
        lines += ["", "Section times: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + "."]
    return "\n".join(lines) + "\n"
