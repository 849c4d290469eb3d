"""Where everything of a run lives under its output: the one place that joins paths below ``output_url``.

::

    <output_url>/<rel path of each photo>                      enhanced photos
    <output_url>/_metrics/run_id=<run_id>/shard-NNNNN.parquet  one Parquet file per shard
    <output_url>/_metrics/run_id=<run_id>/_run.json            the run's manifest (its plan)
    <output_url>/_metrics/run_id=<run_id>/_report/report.html  the audit report

Names starting with ``_`` stay out of pyarrow's dataset discovery and ``*.parquet`` globs.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from llie.batch import storage

METRICS_DIR = "_metrics"
RUN_MANIFEST = "_run.json"
REPORT_DIR = "_report"
REPORT_FILE = "report.html"

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.fullmatch(text))  # not match: its "$" also matches before a final newline


def validate_run_id(run_id: str) -> str:
    """run_id becomes a folder name and a partition value: keep it to a safe alphabet."""
    if not isinstance(run_id, str) or not is_run_id(run_id):
        raise ValueError(
            f"invalid run_id {run_id!r}: use letters, digits, '.', '_' or '-' (max 128), "
            "starting with a letter or digit"
        )
    return run_id


def new_run_id() -> str:
    """UTC timestamp plus a short random suffix: sortable, and two runs never collide.

    Always contains letters, so hive partition readers keep it a string.
    """
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def metrics_root(output_url: str) -> str:
    """The folder of every run's metrics."""
    return storage.join(output_url, METRICS_DIR)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run under ``output_url``; ``*_rel`` ones are relative to it.

    Every path of the run's record checks ``run_id`` first (it becomes a folder name); the photos'
    own paths do not need one.
    """

    output_url: str
    run_id: str

    @property
    def metrics_rel(self) -> str:
        return f"{METRICS_DIR}/run_id={validate_run_id(self.run_id)}"

    @property
    def metrics_url(self) -> str:
        return storage.join(self.output_url, self.metrics_rel)

    @property
    def manifest_rel(self) -> str:
        return f"{self.metrics_rel}/{RUN_MANIFEST}"

    @property
    def manifest_url(self) -> str:
        return storage.join(self.output_url, self.manifest_rel)

    def shard_rel(self, shard_id: str) -> str:
        return f"{self.metrics_rel}/{shard_id}.parquet"

    def shard_url(self, shard_id: str) -> str:
        return storage.join(self.output_url, self.shard_rel(shard_id))

    @property
    def report_dir_url(self) -> str:
        return storage.join(self.output_url, f"{self.metrics_rel}/{REPORT_DIR}")

    @property
    def report_url(self) -> str:
        return storage.join(self.output_url, f"{self.metrics_rel}/{REPORT_DIR}/{REPORT_FILE}")

    def image_url(self, rel: str) -> str:
        """Where the enhanced photo of the input at ``rel`` goes."""
        return storage.join(self.output_url, rel)
