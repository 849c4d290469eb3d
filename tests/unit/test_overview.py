"""One run overview, its rows built once and written three ways: text, HTML and markdown."""

from __future__ import annotations

import html
import re

from flows.artifacts import run_markdown, summary_text
from llie.audit.overview import RunOverview
from llie.audit.table import Table

FLOW_KEYS = {
    "run_id",
    "images",
    "ok",
    "errors",
    "skipped",
    "mean_psnr",
    "images_per_second",
    "processed",
    "shards",
    "shards_resumed",
    "failed_shards",
    "seconds",
    "metrics_url",
    "output_url",
}


def _troubled() -> RunOverview:
    return RunOverview(
        run_id="r1",
        images=12,
        ok=9,
        error=2,
        skipped=1,
        shards=4,
        shards_resumed=1,
        failed_shards=("shard-00002", "shard-00003"),
        mean_psnr=21.256,
        images_per_second=3.5,
        processed=7,
        seconds=2.0,
        output_url="s3://bucket/out",
        metrics_url="s3://bucket/out/_metrics/run_id=r1",
    )


def _text_pairs(lines: list[str]) -> list[tuple[str, str]]:
    return [tuple(re.fullmatch(r"  (\S.*?)  +(\S.*)", line).groups()) for line in lines]  # type: ignore[misc,union-attr]


def _markdown_pairs(lines: list[str]) -> list[tuple[str, str]]:
    assert lines[:2] == ["| | |", "|---|---|"]
    pairs = [re.fullmatch(r"\| (.*?) \| (.*) \|", line).groups() for line in lines[2:]]  # type: ignore[union-attr]
    return [(a.replace("\\|", "|"), b.replace("\\|", "|")) for a, b in pairs]


def _html_pairs(page: str) -> list[tuple[str, str]]:
    rows = re.findall(r'<tr><td class="l">(.*?)</td><td class="l">(.*?)</td></tr>', page)
    return [(html.unescape(a), html.unescape(b)) for a, b in rows]


def test_the_three_renderings_carry_the_same_rows():
    overview = _troubled()
    rows = overview.rows()
    assert ("ok / error / skipped", "9 / 2 / 1") in rows
    assert ("shards", "4 (1 resumed); failed: shard-00002, shard-00003") in rows
    assert ("mean PSNR", "21.26 dB") in rows and ("throughput", "3.50 images/s (7 processed in 2.0 s)") in rows

    text = summary_text(overview).splitlines()
    assert text[0] == "run r1" and text[-1] == "  to retry them: llie run ... --run-id r1 --retry-failed"
    assert _text_pairs(text[1:-1]) == rows

    markdown = run_markdown(overview).splitlines()
    assert markdown[0] == "## llie run `r1`"
    assert _markdown_pairs(markdown[2:]) == [*rows, ("report", "not written")]

    assert _html_pairs(overview.table().html()) == rows


def test_the_flow_dict_keeps_its_keys_and_comes_back_as_the_model():
    overview = _troubled()
    summary = overview.to_dict()
    assert set(summary) == FLOW_KEYS
    assert (summary["errors"], summary["failed_shards"]) == (2, ["shard-00002", "shard-00003"])
    assert RunOverview.from_dict(summary) == overview
    # a dict from before (or a partial one) renders what it has
    partial = RunOverview.from_dict({"run_id": "x", "images": 4, "errors": 1, "failed_shards": ["shard-00000"]})
    assert partial.error == 1 and ("shards", "?; failed: shard-00000") in partial.rows()
    assert summary_text(summary) == summary_text(overview)


def test_a_clean_run_has_no_retry_line_and_no_failed_shards():
    overview = RunOverview("ok-run", 3, ok=3, shards=1, images_per_second=1.0, processed=3, seconds=3.0)
    text = summary_text(overview)
    assert "retry" not in text and "failed" not in text and "n/a (no references)" in text


def test_cells_are_escaped_for_each_format():
    table = Table.of(["name", "n"], [["a|b <i>\\", 1]])
    assert table.markdown() == ["| name | n |", "|---|---|", "| a\\|b <i>\\\\ | 1 |"]
    assert '<td class="l">a|b &lt;i&gt;\\</td><td class="">1</td>' in table.html()
    assert table.text() == ["name      n", "--------  -", "a|b <i>\\  1"]
