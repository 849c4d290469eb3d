"""``llie audit``, the HTML report and the run artifact, on the Parquet of real flow runs.

One module-scoped pair of real ``enhance_archive`` runs (Prefect test harness API, the shared
external Dask cluster) over the same inputs; every number the audit prints is checked against
the same Parquet read independently (DuckDB, pyarrow, numpy).
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from llie.audit import contact_sheet, report
from llie.audit import summary as audit
from llie.audit import text as audit_text
from llie.audit.comparison import compare
from llie.audit.sources import PhotoRoots
from llie.batch import archive, storage
from llie.stats import bootstrap_interval
from tests.conftest import encode, gradient, run_archive, write_images

RUN_A, RUN_B = "audit-a", "audit-b"
GOOD = [f"g{i:02d}.png" for i in range(9)] + ["sub/g09.jpg"]
NO_REF = "g08.png"
BIG = "big.png"  # over max_pixels: skipped
BROKEN = ["broken/empty.jpg", "broken/empty.png"]
SHARD_SIZE = 7  # 13 images: 2 shards
PLOTS = {"psnr_hist", "ssim_hist", "before_after", "stage_times", "contact_worst", "contact_best"}
DOC = Path(__file__).resolve().parents[2] / "docs" / "parquet_schema.md"


@dataclass(frozen=True)
class Runs:
    inp: Path
    ref: Path
    out: Path
    summary_a: dict
    summary_b: dict


@pytest.fixture(scope="module")
def runs(prefect_harness, dask_address, tmp_path_factory, bundle_path) -> Runs:
    root = tmp_path_factory.mktemp("audit")
    inp, ref, out = root / "in", root / "ref", root / "out"
    write_images(inp, GOOD)
    for i, name in enumerate(GOOD):
        if name != NO_REF:  # references of varying brightness: a spread of PSNRs to rank
            fmt = "JPEG" if name.endswith(".jpg") else "PNG"
            (ref / name).parent.mkdir(parents=True, exist_ok=True)
            (ref / name).write_bytes(encode(gradient(64, 48, seed=i, peak=0.4 + 0.05 * i), fmt))
    (inp / BIG).write_bytes(encode(gradient(80, 60, seed=99)))
    for name in BROKEN:
        (inp / name).parent.mkdir(parents=True, exist_ok=True)
        (inp / name).write_bytes(b"")
    common = dict(
        shard_size=SHARD_SIZE,
        dask_address=dask_address,
        reference_url=str(ref),
        max_pixels=64 * 48,
        model=bundle_path,
        retry_delay_seconds=0.2,
    )
    summary_a = run_archive(str(inp), str(out), run_id=RUN_A, **common)
    # Between the runs one image breaks and another changes: a status regression and a PSNR change.
    (inp / "g01.png").write_bytes((inp / "g01.png").read_bytes()[:60])
    (inp / "g02.png").write_bytes(encode(gradient(64, 48, seed=42, peak=0.04)))
    summary_b = run_archive(str(inp), str(out), run_id=RUN_B, **common)
    return Runs(inp, ref, out, summary_a, summary_b)


# --------------------------------------------------------------------------- independent readers


def rows_of(out: Path, run_id: str) -> list[dict]:
    return pq.read_table(out / "_metrics" / f"run_id={run_id}").to_pylist()


def files_of(out: Path, run_id: str) -> str:
    return f"read_parquet('{out}/_metrics/run_id={run_id}/*.parquet')"


def one(sql: str) -> tuple:
    return duckdb.sql(sql).fetchall()[0]


# --------------------------------------------------------------------------- one run


def test_flow_runs_are_what_the_tests_assume(runs):
    assert (runs.summary_a["images"], runs.summary_a["ok"], runs.summary_a["errors"], runs.summary_a["skipped"]) == (
        13,
        10,
        2,
        1,
    )
    assert runs.summary_a["shards"] == 2 and runs.summary_b["shards"] == 2
    assert (runs.summary_b["ok"], runs.summary_b["errors"]) == (9, 3)


def test_counts_and_problem_reasons(runs):
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A))
    rows = rows_of(runs.out, RUN_A)
    statuses = Counter(r["status"] for r in rows)
    assert (s.images, s.ok, s.error, s.skipped) == (len(rows), statuses["ok"], statuses["error"], statuses["skipped"])
    assert (s.images, s.ok, s.error, s.skipped) == (13, 10, 2, 1)
    assert (s.shards, s.duplicates) == (2, 0)
    expected = Counter((r["status"], r["error"]) for r in rows if r["status"] != "ok")
    assert {(st, reason): n for st, reason, n in s.problems} == dict(expected)
    assert s.problems[0] == ("error", "decode: empty file", 2)  # most common first
    assert s.problems[1][0] == "skipped" and s.problems[1][1].startswith("decode: image too large")
    assert s.references == 9 and s.warnings == [("no reference image", 1)]
    assert s.model_versions == sorted({r["model_version"] for r in rows if r["model_version"]})


def test_photos_the_capture_gate_moved_toward_the_neutral_brightness_are_counted(runs, tmp_path):
    """Rows whose exposure_kept is below 0.5, counted as duckdb counts them. The shipped gate keeps these
    synthetic photos' own brightness, so the rows of a copy of the run are given other shares."""
    out = tmp_path / "out"
    shutil.copytree(runs.out / "_metrics" / f"run_id={RUN_A}", out / "_metrics" / f"run_id={RUN_A}")
    for k, path in enumerate(sorted((out / "_metrics" / f"run_id={RUN_A}").glob("shard-*.parquet"))):
        table = pq.read_table(path)
        kept = table.column("exposure_kept").to_pylist()
        kept = [None if v is None else (0.1 * i + 0.2 * k) % 1.0 for i, v in enumerate(kept)]
        column = table.schema.get_field_index("exposure_kept")
        pq.write_table(table.set_column(column, table.schema.field(column), pa.array(kept, pa.float64())), path)
    s = audit.summarise(audit.load_run(str(out), RUN_A))
    (neutral,) = one(f"select count(*) from {files_of(out, RUN_A)} where exposure_kept < 0.5 and status = 'ok'")
    assert s.neutral_exposure == neutral and 0 < neutral < s.ok
    assert f"{neutral} of the ok images brightened mostly toward the model's neutral brightness" in (
        audit_text.format_summary(s)
    )
    (as_run,) = one(f"select count(*) from {files_of(runs.out, RUN_A)} where exposure_kept < 0.5")
    text = audit_text.format_summary(audit.summarise(audit.load_run(str(runs.out), RUN_A)))
    assert ("neutral brightness" in text) == (as_run > 0)  # the line only where there is something to say


def test_quality_percentiles_against_duckdb_and_numpy(runs):
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A))
    for metric, stats in (("psnr", s.psnr), ("ssim", s.ssim)):
        n, mean, median, p5, p95 = one(
            f"SELECT count({metric}), avg({metric}), quantile_cont({metric}, 0.5), quantile_cont({metric}, 0.05), "
            f"quantile_cont({metric}, 0.95) FROM {files_of(runs.out, RUN_A)} WHERE status = 'ok' AND isfinite({metric})"
        )
        assert n == stats.n == 9
        assert (stats.mean, stats.median, stats.p5, stats.p95) == pytest.approx((mean, median, p5, p95), rel=1e-12)
        values = np.array(
            [r[metric] for r in rows_of(runs.out, RUN_A) if r["status"] == "ok" and r[metric] is not None]
        )
        assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
        assert [stats.p5, stats.median, stats.p95] == pytest.approx(np.percentile(values, [5, 50, 95]), rel=1e-12)
    assert s.psnr.p5 < s.psnr.median < s.psnr.p95  # the references do spread the scores


def test_no_reference_stats_against_duckdb(runs):
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A))
    for name in audit.NR_SHOWN:
        before, after = one(
            f"SELECT avg(before_{name}), avg(after_{name}) FROM {files_of(runs.out, RUN_A)} WHERE status = 'ok'"
        )
        assert s.no_reference[name]["before"].mean == pytest.approx(before, rel=1e-12)
        assert s.no_reference[name]["after"].mean == pytest.approx(after, rel=1e-12)
        assert s.no_reference[name]["after"].n == 10
    assert s.no_reference["brightness"]["after"].mean > s.no_reference["brightness"]["before"].mean


def test_throughput_and_stage_shares_against_duckdb(runs):
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A))
    busy = " + ".join(f"coalesce(sec_{st}, 0)" for st in archive.STAGES)
    sums = one(f"SELECT {', '.join(f'sum(sec_{st})' for st in archive.STAGES)} FROM {files_of(runs.out, RUN_A)}")
    total = sum(v or 0.0 for v in sums)
    for stage, seconds in zip(archive.STAGES, sums):
        assert s.stage_seconds[stage] == pytest.approx(seconds or 0.0, rel=1e-9, abs=1e-12)
        assert s.stage_share[stage] == pytest.approx((seconds or 0.0) / total, rel=1e-9, abs=1e-12)
    assert sum(s.stage_share.values()) == pytest.approx(1.0)
    assert s.stage_share["refiner"] > 0
    (wall,) = one(
        f"SELECT max(epoch_us(finished_at)) / 1e6 - min(epoch_us(finished_at) / 1e6 - ({busy})) "
        f"FROM {files_of(runs.out, RUN_A)}"
    )
    assert s.wall_seconds == pytest.approx(wall, rel=1e-9)
    assert s.images_per_second == pytest.approx(13 / wall, rel=1e-9)
    assert s.busy_seconds == pytest.approx(total, rel=1e-9)
    bytes_in, bytes_out = one(f"SELECT sum(bytes_in), sum(bytes_out) FROM {files_of(runs.out, RUN_A)}")
    assert (s.bytes_in, s.bytes_out) == (bytes_in, bytes_out)


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_worst_and_best_against_duckdb(runs, metric):
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A), top=4, rank_by=metric)
    where = f"WHERE status = 'ok' AND isfinite({metric})"
    worst = duckdb.sql(
        f"SELECT rel_path, {metric} FROM {files_of(runs.out, RUN_A)} {where} ORDER BY {metric}, rel_path LIMIT 4"
    ).fetchall()
    best = duckdb.sql(
        f"SELECT rel_path, {metric} FROM {files_of(runs.out, RUN_A)} {where} ORDER BY {metric} DESC, rel_path LIMIT 4"
    ).fetchall()
    assert [(i.rel_path, i.value) for i in s.worst] == worst
    assert [(i.rel_path, i.value) for i in s.best] == best
    assert NO_REF not in {i.rel_path for i in s.worst + s.best}
    first = s.worst[0]
    assert first.input_path == f"{runs.inp}/{first.rel_path}" and first.output_path == f"{runs.out}/{first.rel_path}"


def test_latest_run_list_and_missing_runs(runs, tmp_path):
    listed = audit.list_runs(str(runs.out))
    assert [r.run_id for r in listed] == [RUN_A, RUN_B]
    assert [(r.images, r.ok, r.error, r.skipped) for r in listed] == [(13, 10, 2, 1), (13, 9, 3, 1)]
    assert audit.load_run(str(runs.out)).run_id == RUN_B
    with pytest.raises(audit.AuditError, match="no run 'nope'.*audit-a, audit-b"):
        audit.load_run(str(runs.out), "nope")
    with pytest.raises(audit.AuditError, match="no metrics"):
        audit.load_run(str(tmp_path))


def test_duplicate_rows_keep_the_latest(runs, tmp_path):
    """A shard file copied by hand under another name: each image counted once, the copy reported."""
    src = runs.out / "_metrics" / f"run_id={RUN_A}"
    dst = tmp_path / "out" / "_metrics" / f"run_id={RUN_A}"
    shutil.copytree(src, dst)
    shutil.copy(dst / "shard-00000.parquet", dst / "shard-00009.parquet")
    s = audit.summarise(audit.load_run(str(tmp_path / "out"), RUN_A))
    assert (s.images, s.ok, s.error, s.skipped, s.duplicates) == (13, 10, 2, 1, SHARD_SIZE)


# --------------------------------------------------------------------------- two runs


def test_compare_against_duckdb_join(runs):
    cmp = compare(audit.load_run(str(runs.out), RUN_B), audit.load_run(str(runs.out), RUN_A))
    joined = duckdb.sql(
        f"SELECT b.rel_path, a.status, b.status, "
        f"CASE WHEN a.status = 'ok' AND b.status = 'ok' THEN b.psnr - a.psnr END, "
        f"CASE WHEN a.status = 'ok' AND b.status = 'ok' THEN b.ssim - a.ssim END "
        f"FROM {files_of(runs.out, RUN_A)} a JOIN {files_of(runs.out, RUN_B)} b ON a.rel_path = b.rel_path "
        f"ORDER BY b.rel_path"
    ).fetchall()
    assert cmp.common == len(joined) == 13 and cmp.only_in_run == cmp.only_in_base == []
    assert cmp.status_changes == [(p, a, b) for p, a, b, _, _ in joined if a != b] == [("g01.png", "ok", "error")]
    for rel, _, _, d_psnr, d_ssim in joined:
        for metric, expected in (("psnr", d_psnr), ("ssim", d_ssim)):
            got = cmp.per_image[rel][metric]
            assert (got is None and expected is None) or got == pytest.approx(expected, rel=1e-12, abs=1e-12), rel
    psnr_deltas = np.array([d for *_, d, _ in joined if d is not None])
    assert cmp.deltas["psnr"].n == psnr_deltas.size == 8
    assert cmp.deltas["psnr"].mean == pytest.approx(psnr_deltas.mean(), rel=1e-9, abs=1e-12)
    assert [cmp.deltas["psnr"].p5, cmp.deltas["psnr"].p95] == pytest.approx(
        np.percentile(psnr_deltas, [5, 95]), rel=1e-9, abs=1e-12
    )
    low, high = cmp.delta_intervals["psnr"]
    assert (low, high) == pytest.approx(bootstrap_interval(psnr_deltas))
    assert low <= psnr_deltas.mean() <= high and psnr_deltas.min() <= low and high <= psnr_deltas.max()

    drops = sorted((d, p) for p, a, b, d, _ in joined if d is not None and d < -cmp.tolerance)
    assert [w.rel_path for w in cmp.worse] == ["g01.png"] + [p for _, p in drops]
    assert (cmp.worse[0].base_status, cmp.worse[0].status, cmp.worse[0].delta) == ("ok", "error", None)
    rises = [p for p, a, b, d, _ in joined if d is not None and d > cmp.tolerance]
    assert cmp.improved == len(rises) and cmp.worse_count == len(cmp.worse)
    # g08 (no reference) and the three images that failed in both runs have no PSNR to compare.
    assert (cmp.unscored, cmp.scored) == (4, psnr_deltas.size) and cmp.nothing_compared() is None
    assert cmp.improved + cmp.unchanged + cmp.worse_count + cmp.unscored == 13
    # g02 got a different (much darker) input: its score moved, one way or the other.
    assert abs(cmp.per_image["g02.png"]["psnr"]) > cmp.tolerance
    text = audit_text.format_comparison(cmp)
    assert "g01.png" in text and "ok -> error" in text
    assert "mean 95% interval" in text and f"{low:+.2f} to {high:+.2f}" in text


def copy_run(runs: Runs, out: Path, run_id: str, change=lambda table: table) -> None:
    """RUN_A's shard files under ``out`` as run ``run_id``, each table passed through ``change``."""
    dst = out / "_metrics" / f"run_id={run_id}"
    dst.mkdir(parents=True)
    for f in (runs.out / "_metrics" / f"run_id={RUN_A}").glob("shard-*.parquet"):
        pq.write_table(change(pq.read_table(f)), dst / f.name)


def without_scores(table: pa.Table) -> pa.Table:
    """The rows of a run made without references: no PSNR, no SSIM."""
    for col in ("psnr", "ssim"):
        table = table.set_column(table.schema.get_field_index(col), col, pa.nulls(table.num_rows, pa.float64()))
    return table


def elsewhere(table: pa.Table) -> pa.Table:
    """The rows of a run over other inputs: no image in common."""
    col = table.schema.get_field_index("rel_path")
    return table.set_column(col, "rel_path", pa.array([f"other/{p}" for p in table.column(col).to_pylist()]))


def test_compare_with_a_baseline_without_scores_or_images_in_common(runs, tmp_path):
    """Images without a score in either run are not "unchanged"; a gate that compared nothing fails."""
    from llie_cli.main import cli

    copy_run(runs, tmp_path, "no-ref", without_scores)
    copy_run(runs, tmp_path, "disjoint", elsewhere)
    run = audit.load_run(str(runs.out), RUN_A)
    cmp = compare(run, audit.load_run(str(tmp_path), "no-ref"))
    assert (cmp.common, cmp.improved, cmp.unchanged, cmp.worse_count, cmp.unscored, cmp.scored) == (13, 0, 0, 0, 13, 0)
    assert cmp.nothing_compared() == "no image has a psnr in both runs"
    text = audit_text.format_comparison(cmp)
    assert "0 better, 0 unchanged, 0 worse; 13 without a score in both runs" in text
    assert "nothing compared by psnr: no image has a psnr in both runs" in text and "no image got worse" not in text
    cmp = compare(run, audit.load_run(str(tmp_path), "disjoint"))
    assert (cmp.common, cmp.unchanged, cmp.unscored, cmp.nothing_compared()) == (0, 0, 0, "no image is in both runs")
    assert "nothing compared by psnr: no image is in both runs" in audit_text.format_comparison(cmp)

    def gate(base: str, *args: str):
        return CliRunner().invoke(
            cli, ["audit", str(runs.out), "--run", RUN_A, "--compare", base, "--compare-output", str(tmp_path), *args]
        )

    for base, reason in (("no-ref", "no image has a psnr in both runs"), ("disjoint", "no image is in both runs")):
        result = gate(base, "--fail-on-worse")
        assert result.exit_code == 1, result.output
        assert f"Error: --fail-on-worse: nothing compared by psnr: {reason}" in result.output
        assert "Usage:" not in result.output and f"compare run {RUN_A} with baseline {base}" in result.output
        assert gate(base).exit_code == 0  # without the gate it is a report, not a failure
    # SSIM missing too: ranking by it compares nothing either.
    assert gate("no-ref", "--fail-on-worse", "--rank-by", "ssim").exit_code == 1


def test_cli_refuses_options_that_would_do_nothing(runs):
    from llie_cli.main import cli

    for args in (
        ["--fail-on-worse"],
        ["--tolerance", "5"],
        ["--tolerance", "0"],
        ["--fail-on-worse", "--tolerance", "5"],
    ):
        result = CliRunner().invoke(cli, ["audit", str(runs.out), "--run", RUN_A, *args])
        assert result.exit_code == 2, (args, result.output)
        assert f"Error: {args[0]} needs --compare RUN_ID" in result.output


def test_cli_refuses_top_0(runs):
    """--top 0 would print "no images ranked: no ok image has a psnr (no references?)", which is wrong."""
    from llie_cli.main import cli

    result = CliRunner().invoke(cli, ["audit", str(runs.out), "--run", RUN_A, "--top", "0"])
    assert result.exit_code == 2 and "Invalid value for '--top'" in result.output
    assert "no images ranked" not in result.output


def test_cli_reports_an_unreadable_shard_file_as_a_data_error(runs, tmp_path):
    """Not a usage error (exit 2 with the usage text): an error (exit 1) that names the file."""
    from llie_cli.main import cli

    copy_run(runs, tmp_path, RUN_A)
    folder = tmp_path / "_metrics" / f"run_id={RUN_A}"
    (folder / "shard-00002.parquet").write_bytes(b"PAR1 not really")
    for args in (["--run", RUN_A], []):  # load_run, and list_runs (the latest run)
        result = CliRunner().invoke(cli, ["audit", str(tmp_path), *args])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith(f"Error: unreadable metrics file {folder}/shard-00002.parquet: ")
        assert "Usage:" not in result.output
    # A Parquet file whose column has another type: pyarrow's message does not name the file, the audit does.
    (folder / "shard-00002.parquet").unlink()
    pq.write_table(pa.table({"rel_path": ["x.png"], "psnr": ["high"]}), folder / "shard-00003.parquet")
    with pytest.raises(audit.AuditError, match=re.escape(f"unreadable metrics file {folder}/shard-00003.parquet: ")):
        audit.load_run(str(tmp_path), RUN_A)


# --------------------------------------------------------------------------- report


def test_the_audit_overview_reads_the_same_in_text_html_and_markdown(runs, tmp_path):
    """One audited run with errors and skips: its overview rows, built once, in each of the three renderings."""
    from flows.artifacts import run_markdown

    run = audit.load_run(str(runs.out), RUN_B)
    summary = audit.summarise(run)
    rows = summary.overview().rows()
    assert ("ok / error / skipped", "9 / 3 / 1") in rows and ("shards", "2") in rows
    text = audit_text.format_summary(summary)
    page = Path(report.write_report(run, summary, str(tmp_path / "r.html")).html_url).read_text()
    markdown = run_markdown(None, summary)
    for label, value in rows:
        assert re.search(rf"^  {re.escape(label)} +{re.escape(value)}$", text, flags=re.M), (label, text)
        assert f'<td class="l">{html.escape(label)}</td><td class="l">{html.escape(value)}</td>' in page, label
        assert f"| {label} | {value} |" in markdown, (label, markdown)


def test_html_report_is_one_file_with_every_plot_inside(runs, tmp_path):
    run, base = audit.load_run(str(runs.out), RUN_B), audit.load_run(str(runs.out), RUN_A)
    summary, base_summary = audit.summarise(run), audit.summarise(base)
    cmp = compare(run, base)
    files = report.write_report(
        run, summary, str(tmp_path / "rep" / "audit.html"), report.Baseline(base, base_summary, cmp)
    )
    assert files.html_url == str(tmp_path / "rep" / "audit.html")
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["audit.html"]  # no PNG beside it
    page = Path(files.html_url).read_text()
    assert set(files.plots) == PLOTS | {"compare_psnr"}
    embedded = re.findall(r'<figure id="(\w+)"[^>]*><img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(name for name, _ in embedded) == sorted(files.plots)
    for name, data in embedded:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n"), name
    # A comparison comes first, with the 95% intervals `llie audit --compare` prints.
    assert page.index("<h2>Compared with run") < page.index("<h2>Images</h2>")
    lo, hi = cmp.delta_intervals["psnr"]
    assert f">{lo:+.2f} to {hi:+.2f}</td>" in page and "mean 95% interval" in page
    # Worst/best tables name each metric once.
    for table in re.findall(r"<h2>(?:Worst|Best) [^<]*</h2><table><thead>(.*?)</thead>", page):
        headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
        assert len(headers) == len(set(headers)), headers
    # Self-contained: nothing fetched from anywhere when opened.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page
    for item in summary.worst + summary.best:
        assert item.rel_path in page
    assert "g01.png" in page and "ok → error" in page
    # The contact sheets had real pixels to show: inputs, outputs and references all readable, each by its
    # rel_path under the run's own folders (llie.audit.sources).
    worst, roots = summary.worst[0], PhotoRoots.of_run(run.output_url, run.manifest)
    for column in ("before", "after", "reference"):
        thumb, size = contact_sheet._thumbnail(roots.read(column, worst.rel_path))
        assert thumb is not None and thumb.shape[2] == 3 and size > 0


def test_report_without_references_leaves_out_the_score_plots(runs, tmp_path):
    """Rows of a run with no reference at all: the run's files with the scores nulled."""
    src = runs.out / "_metrics" / f"run_id={RUN_A}"
    dst = tmp_path / "out" / "_metrics" / f"run_id={RUN_A}"
    dst.mkdir(parents=True)
    for f in src.glob("shard-*.parquet"):
        table = pq.read_table(f)
        for col in ("psnr", "ssim"):
            table = table.set_column(table.schema.get_field_index(col), col, pa.nulls(table.num_rows, pa.float64()))
        pq.write_table(table, dst / f.name)
    run = audit.load_run(str(tmp_path / "out"), RUN_A)
    summary = audit.summarise(run)
    assert summary.psnr is None and summary.worst == [] and "no images ranked" in audit_text.format_summary(summary)
    files = report.write_report(run, summary, str(tmp_path / "rep"))
    assert files.html_url.endswith("/rep/report.html")
    # nothing ranked: before/after photos picked by no-reference statistics instead
    assert set(files.plots) == {"before_after", "stage_times", "contact_flagged"}
    assert "No ok image has a reference" in Path(files.html_url).read_text()


# --------------------------------------------------------------------------- CLI


def test_cli_audit(runs, tmp_path):
    from llie_cli.main import cli

    def invoke(*args):
        return CliRunner().invoke(cli, ["audit", str(runs.out), *args], catch_exceptions=False)

    result = invoke("--run", RUN_A, "--top", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"run {RUN_A}" in out and "ok / error / skipped  10 / 2 / 1" in out
    assert "decode: empty file" in out and "9 of 10 ok images have a reference" in out
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A), top=3)
    (psnr_line,) = [line for line in out.splitlines() if line.strip().startswith("PSNR (dB)")]
    assert psnr_line.split()[2:] == ["9"] + [f"{v:.2f}" for v in (s.psnr.mean, s.psnr.median, s.psnr.p5, s.psnr.p95)]
    assert "worst 3 by psnr" in out and all(i.rel_path in out for i in s.worst)
    assert "refiner" in out and "images/s" in out

    assert f"run {RUN_B}" in invoke().output  # the latest run by default
    listed = invoke("--runs").output
    assert RUN_A in listed and RUN_B in listed

    json_path = tmp_path / "a.json"  # (--report: test_audit_reads_s3)
    result = invoke("--run", RUN_B, "--compare", RUN_A, "--json", str(json_path), "--fail-on-worse")
    assert result.exit_code == 3, result.output  # g01 broke
    assert f"compare run {RUN_B} with baseline {RUN_A}" in result.output and "ok -> error" in result.output
    doc = json.loads(json_path.read_text())
    assert doc["summary"]["run_id"] == RUN_B and len(doc["comparison"]["per_image"]) == 13
    assert json.loads(invoke("--run", RUN_A, "--json", "-").output)["summary"]["skipped"] == 1
    elsewhere = invoke("--run", RUN_B, "--compare", RUN_A, "--compare-output", str(runs.out))
    assert elsewhere.exit_code == 0 and f"compare run {RUN_B} with baseline {RUN_A}" in elsewhere.output
    assert (
        "--compare-output needs --compare"
        in CliRunner().invoke(cli, ["audit", str(runs.out), "--compare-output", "x"]).output
    )

    missing = CliRunner().invoke(cli, ["audit", str(runs.out), "--run", "nope"])
    assert missing.exit_code == 1 and "no run 'nope'" in missing.output
    bad = CliRunner().invoke(cli, ["audit", str(runs.out), "--run", "../x"])
    assert bad.exit_code == 2 and "invalid run_id" in bad.output
    assert "--compare" in CliRunner().invoke(cli, ["audit", "--help"]).output


def test_audit_reads_s3(runs, s3, tmp_path):
    """The same run copied to (moto) S3: the same numbers, and the report written there."""
    local_root = runs.out / "_metrics" / f"run_id={RUN_A}"
    for f in local_root.iterdir():
        if f.is_file():
            storage.write_bytes_atomic(s3.url(f"out/_metrics/run_id={RUN_A}/{f.name}"), f.read_bytes())
    remote = audit.summarise(audit.load_run(s3.url("out"), RUN_A)).to_dict()
    local = audit.summarise(audit.load_run(str(runs.out), RUN_A)).to_dict()
    assert remote.pop("output_url") == s3.url("out") and local.pop("output_url") == str(runs.out)
    assert remote == local
    assert [r.run_id for r in audit.list_runs(s3.url("out"))] == [RUN_A]
    from llie_cli.main import cli

    result = CliRunner().invoke(
        cli, ["audit", s3.url("out"), "--top", "2", "--report", s3.url("reports/a.html")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert f"run {RUN_A}" in result.output and "images                13" in result.output
    assert f"report  {s3.url('reports/a.html')}  (6 plots inside)" in result.output
    page = storage.read_bytes(s3.url("reports/a.html")).decode()
    for name in PLOTS:
        assert f'<figure id="{name}"' in page
    assert storage.list_files(s3.url("reports")) == ["a.html"]


# --------------------------------------------------------------------------- the documented queries


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _localise(code: str, out: Path) -> str:
    return (
        code.replace("'enhanced/", f"'{out}/")
        .replace('"enhanced/', f'"{out}/')
        .replace("'new-model'", f"'{RUN_B}'")
        .replace("'old-model'", f"'{RUN_A}'")
    )


def test_documented_pyarrow_query(runs, capsys):
    (code,) = [b for b in _blocks("python") if "output_url =" in b]
    code = re.sub(r'^output_url = "[^"]*"', f"output_url = {str(runs.out)!r}", code, flags=re.M)
    code = re.sub(r'^run_id = "[^"]*"', f"run_id = {RUN_A!r}", code, flags=re.M)
    ns: dict = {}
    exec(compile(code, "<docs/parquet_schema.md>", "exec"), ns)
    s = audit.summarise(audit.load_run(str(runs.out), RUN_A))
    assert ns["psnr_p5_p50_p95"] == pytest.approx([s.psnr.p5, s.psnr.median, s.psnr.p95], rel=1e-12)
    assert ns["worst"]["rel_path"].to_pylist() == [i.rel_path for i in s.worst]
    assert capsys.readouterr().out.strip()
    meta = pq.read_schema(runs.out / "_metrics" / f"run_id={RUN_A}" / "shard-00000.parquet").metadata
    assert meta[b"llie.schema_version"] == str(archive.SCHEMA_VERSION).encode() == b"1"
    assert f"schema version {archive.SCHEMA_VERSION}" in DOC.read_text()
    # Every column of the schema is documented.
    for name in archive.METRICS_SCHEMA.names:
        assert f"`{name}`" in DOC.read_text(), name


def test_documented_duckdb_queries(runs):
    per_run, worse, _s3 = _blocks("sql")
    rows = duckdb.sql(_localise(per_run, runs.out)).fetchall()
    assert [r[0] for r in rows] == [RUN_A, RUN_B]
    for run_id, images, ok, error, skipped, mean, (p5, p50, p95) in rows:
        s = audit.summarise(audit.load_run(str(runs.out), run_id))
        assert (images, ok, error, skipped) == (s.images, s.ok, s.error, s.skipped)
        assert (mean, p5, p50, p95) == pytest.approx((s.psnr.mean, s.psnr.p5, s.psnr.median, s.psnr.p95), rel=1e-12)
    cmp = compare(audit.load_run(str(runs.out), RUN_B), audit.load_run(str(runs.out), RUN_A))
    got = [r[0] for r in duckdb.sql(_localise(worse, runs.out)).fetchall()]
    assert got == [w.rel_path for w in cmp.worse if w.delta is not None]


def test_documented_polars_query(runs):
    import polars as pl

    (code,) = [b for b in _blocks("python") if "import polars" in b]
    ns: dict = {}
    exec(compile(_localise(code, runs.out), "<docs/parquet_schema.md>", "exec"), ns)
    per_run = ns["per_run"]
    assert per_run["run_id"].to_list() == [RUN_A, RUN_B] and per_run.schema["run_id"] == pl.String


# --------------------------------------------------------------------------- the Prefect artifact


def _artifacts(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_flow_writes_the_report_and_publishes_the_artifact(runs):
    from prefect import flow

    from flows.artifacts import artifact_key, publish_run_report

    # The fixture's real flow run of RUN_A published these itself: nothing here has called the hook yet.
    url = report.report_url(str(runs.out), RUN_A)
    assert url == f"{runs.out}/_metrics/run_id={RUN_A}/_report/report.html"
    assert [p.name for p in Path(url).parent.iterdir()] == ["report.html"] and 'id="contact_worst"' in Path(
        url
    ).read_text()

    (artifact,) = _artifacts(artifact_key(RUN_A))
    assert artifact.type == "markdown" and artifact.flow_run_id is not None
    md = artifact.data
    assert f"## llie run `{RUN_A}`" in md and "| ok / error / skipped | 10 / 2 / 1 |" in md
    assert "decode: empty file ×2" in md and "PSNR (dB) | mean" in md
    assert f"(file://{url})" in md and "| shards | 2 |" in md

    @flow(name="audit-artifact-test")
    def finish_run(flow_summary: dict) -> str | None:
        return publish_run_report(str(runs.out), RUN_A, flow_summary)

    # A resume that processed nothing keeps the report file as it is (the output tree untouched).
    mtimes = {p: p.stat().st_mtime_ns for p in Path(url).parent.iterdir()}
    assert finish_run({**runs.summary_a, "processed": 0}) == url
    assert {p: p.stat().st_mtime_ns for p in Path(url).parent.iterdir()} == mtimes

    # The report inside the metrics folder does not disturb any reader of the dataset.
    assert pq.read_table(runs.out / "_metrics").num_rows == 26
    assert archive.read_metrics(str(runs.out), RUN_A).num_rows == 13
    (n,) = one(f"SELECT count(*) FROM read_parquet('{runs.out}/_metrics/*/*.parquet', hive_partitioning = true)")
    assert n == 26


def test_publish_run_artifact_from_the_flow_summary_alone(runs, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from flows.artifacts import publish_run_artifact, publish_run_report

    failed = {
        "run_id": "empty-run",
        "images": 4,
        "ok": 0,
        "errors": 0,
        "skipped": 0,
        "processed": 0,
        "failed_shards": ["shard-00000"],
    }

    @flow(name="audit-artifact-test-2")
    def publish():
        # No metrics at all (every shard failed): no report; the artifact still says what is known.
        return publish_run_artifact(runs.summary_b, None), publish_run_report(
            str(tmp_path / "nothing"), "empty-run", failed
        )

    artifact_id, url = publish()
    assert url is None
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
    assert artifact.key == "llie-run-audit-b"
    assert "| ok / error / skipped | 9 / 3 / 1 |" in artifact.data and "| report | not written |" in artifact.data
    (artifact,) = _artifacts("llie-run-empty-run")
    assert "failed: shard-00000" in artifact.data and "| images | 4 |" in artifact.data
