"""A run at a glance: counts by status, shards (resumed, failed), mean PSNR, throughput, where it went.

One model for the flow's summary (:func:`summarise_run`, returned as :meth:`RunOverview.to_dict`) and for
the audit's (``RunSummary.overview``); its rows are built once, in :meth:`RunOverview.rows`, and every
rendering (the run's log and ``llie run``, ``llie audit``, the HTML report, the Prefect artifact) writes
them through :class:`llie.audit.table.Table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llie.audit.numbers import number
from llie.audit.table import Table
from llie.batch import storage

if TYPE_CHECKING:
    import pyarrow as pa

    from llie.batch.plan import RunPlan

_SHARDS_LISTED = 10


@dataclass(frozen=True)
class RunOverview:
    run_id: str
    images: int
    ok: int = 0
    error: int = 0
    skipped: int = 0
    shards: int | None = None
    shards_resumed: int = 0
    failed_shards: tuple[str, ...] = ()
    mean_psnr: float | None = None  # finite PSNRs of ok rows; None: no references
    images_per_second: float | None = None
    processed: int | None = None  # images this flow run enhanced (None: not from a flow run)
    seconds: float | None = None  # the flow run's time, or the rows' wall clock
    output_url: str | None = None
    metrics_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The dict ``enhance_archive`` returns (its keys are read by users: ``errors``, not ``error``)."""
        return {
            "run_id": self.run_id,
            "images": self.images,
            "ok": self.ok,
            "errors": self.error,
            "skipped": self.skipped,
            "mean_psnr": self.mean_psnr,
            "images_per_second": self.images_per_second,
            "processed": self.processed,
            "shards": self.shards,
            "shards_resumed": self.shards_resumed,
            "failed_shards": list(self.failed_shards),
            "seconds": self.seconds,
            "metrics_url": self.metrics_url,
            "output_url": self.output_url,
        }

    @classmethod
    def from_dict(cls, summary: dict[str, Any]) -> RunOverview:
        """The flow's dict (:meth:`to_dict`) back, keys it lacks left at their defaults."""
        fields = {k: summary[k] for k in cls.__dataclass_fields__ if k in summary and k != "error"}
        fields["error"] = summary.get("errors", summary.get("error", 0))
        fields["failed_shards"] = tuple(summary.get("failed_shards") or ())
        return cls(**{"run_id": "?", "images": 0, **fields})

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows, plain text; rows with nothing to say are left out."""
        rows = [("images", str(self.images)), ("ok / error / skipped", f"{self.ok} / {self.error} / {self.skipped}")]
        if self.shards is not None or self.failed_shards:
            rows.append(("shards", self._shards()))
        psnr = self.mean_psnr
        rows.append(("mean PSNR", "n/a (no references)" if psnr is None else number(psnr, 2, " dB")))
        if self.images_per_second is not None:
            rows.append(("throughput", self._throughput()))
        rows += [(label, url) for label, url in (("output", self.output_url), ("metrics", self.metrics_url)) if url]
        return rows

    def table(self) -> Table:
        return Table.pairs(self.rows())

    def _shards(self) -> str:
        text = "?" if self.shards is None else str(self.shards)
        if self.shards_resumed:
            text += f" ({self.shards_resumed} resumed)"
        if self.failed_shards:
            more = len(self.failed_shards) - _SHARDS_LISTED
            text += f"; failed: {', '.join(self.failed_shards[:_SHARDS_LISTED])}"
            text += f" and {more} more" if more > 0 else ""
        return text

    def _throughput(self) -> str:
        text = f"{number(self.images_per_second)} images/s"
        if self.processed is not None:
            return text + f" ({self.processed} processed in {number(self.seconds, 1)} s)"
        return text + (f" over {number(self.seconds, 1)} s" if self.seconds is not None else "")


def summarise_run(plan: RunPlan, results: list[Any], rows: pa.Table | None, seconds: float) -> RunOverview:
    """The flow run's overview: counts and mean PSNR from its rows, throughput and failures from the shards'
    results.

    The rows, not the results, are the record: they also cover shards finished by an earlier
    attempt of this run. ``results`` holds each shard's summary, or the exception it failed with.
    """
    failed = [s.shard_id for s, r in zip(plan.shards, results) if isinstance(r, BaseException)]
    done = [r for r in results if isinstance(r, dict)]
    counts, psnrs = _counts(plan, rows)
    processed = sum(r["processed"] for r in done)
    return RunOverview(
        run_id=str(plan.spec.run_id),
        images=sum(len(s) for s in plan.shards),
        ok=counts["ok"],
        error=counts["error"],
        skipped=counts["skipped"],
        shards=len(plan.shards),
        shards_resumed=sum(1 for r in done if r["resumed"]),
        failed_shards=tuple(sorted(failed)),
        mean_psnr=sum(psnrs) / len(psnrs) if psnrs else None,
        images_per_second=processed / seconds if processed and seconds > 0 else 0.0,
        processed=processed,
        seconds=round(seconds, 3),
        output_url=storage.redact_url(plan.spec.output_url),
        metrics_url=storage.redact_url(plan.spec.layout.metrics_url),
    )


def _counts(plan: RunPlan, rows: pa.Table | None) -> tuple[dict[str, int], list[float]]:
    """Rows per status, and the finite PSNRs of the ok ones, over the planned shards."""
    counts = {"ok": 0, "error": 0, "skipped": 0}
    psnrs: list[float] = []
    if rows is None:
        return counts, psnrs
    planned = {s.shard_id for s in plan.shards}
    columns = (rows.column(name).to_pylist() for name in ("shard_id", "status", "psnr"))
    for shard_id, status, value in zip(*columns):
        if shard_id not in planned:
            continue
        counts[status] = counts.get(status, 0) + 1
        if status == "ok" and value is not None and math.isfinite(value):
            psnrs.append(value)
    return counts, psnrs
