"""The one way numbers are written in audit texts, reports and run artifacts."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any, digits: int = 2, unit: str = "", signed: bool = False, missing: str = "–") -> str:
    """``value`` with ``digits`` decimals and ``unit``; ``missing`` for None or NaN, text that is no number as it is."""
    if value is None:
        return missing
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return missing
    return f"{value:{'+' if signed else ''}.{digits}f}{unit}"
