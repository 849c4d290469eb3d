"""One run's rows as the audit reads them, and the few helpers every part of the audit shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class RunData:
    """One run's rows (``METRICS_SCHEMA`` + ``run_id``), one per image, and its manifest."""

    run_id: str
    output_url: str
    table: pa.Table
    manifest: dict[str, Any] | None = None
    duplicates: int = 0  # rows dropped because an image had more than one (latest kept)

    def column(self, name: str) -> np.ndarray:
        """A float column as numpy, nulls as NaN."""
        return floats(self.table.column(name))

    @property
    def reference_url(self) -> str | None:
        return (self.manifest or {}).get("reference_url")


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def finite(values: np.ndarray) -> np.ndarray:
    """The finite values, as float64 (a PSNR of inf is counted apart, never averaged)."""
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


@dataclass
class ImageScore:
    rel_path: str
    input_path: str
    output_path: str | None
    value: float  # the ranking metric's value
    psnr: float | None
    ssim: float | None
    before_brightness: float | None
    after_brightness: float | None
    bytes_out: int | None = None


def image_score(r: dict[str, Any], value: float) -> ImageScore:
    return ImageScore(
        rel_path=r["rel_path"],
        input_path=r["input_path"],
        output_path=r["output_path"],
        value=value,
        psnr=r["psnr"],
        ssim=r["ssim"],
        before_brightness=r["before_brightness"],
        after_brightness=r["after_brightness"],
        bytes_out=r["bytes_out"],
    )


def ok_mask(table: pa.Table) -> np.ndarray:
    """True for the rows whose status is ``ok``: the rows quality statistics use."""
    return np.asarray(pc.equal(table.column("status"), "ok").to_numpy(zero_copy_only=False), dtype=bool)


def take_rows(table: pa.Table, indices: np.ndarray) -> list[dict[str, Any]]:
    return table.take(pa.array(np.asarray(indices, dtype=np.int64))).to_pylist()
