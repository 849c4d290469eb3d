"""Photos worth a look in a run without references, where nothing ranks them: picked by no-reference
statistics (largest change, most noise left, brightest and darkest result)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from llie.audit.rows import ImageScore, RunData, image_score, ok_mask, take_rows


@dataclass
class FlaggedImage:
    """An ok image worth a look in a run without references, and what flagged it."""

    reason: str  # e.g. "largest change"
    image: ImageScore  # its ``value``: the statistic that flagged it


# Without references nothing ranks the photos; these no-reference statistics pick the ones to eyeball:
# (reason, value per ok row from a column getter, True: the largest value)
_FLAGS: tuple[tuple[str, Any, bool], ...] = (
    ("largest change", lambda col: np.abs(col("after_brightness") - col("before_brightness")), True),
    ("most noise left", lambda col: col("after_noise"), True),
    ("brightest result", lambda col: col("after_brightness"), True),
    ("darkest result", lambda col: col("after_brightness"), False),
)


def flag_without_references(run: RunData) -> list[FlaggedImage]:
    """One ok image per no-reference criterion (:data:`_FLAGS`), ties by ``rel_path``; none without ok rows."""
    table = run.table
    ok = ok_mask(table)
    paths = table.column("rel_path").to_numpy(zero_copy_only=False)
    flagged = []
    for reason, values_of, largest in _FLAGS:
        values = np.asarray(values_of(run.column), dtype=np.float64)
        candidates = np.flatnonzero(ok & np.isfinite(values))
        if candidates.size == 0:
            continue
        order = np.lexsort((paths[candidates], -values[candidates] if largest else values[candidates]))
        [row] = take_rows(table, candidates[order[:1]])
        flagged.append(FlaggedImage(reason, image_score(row, float(values[candidates[order[0]]]))))
    return flagged
