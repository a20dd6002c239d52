"""Small statistics: percentiles of samples, medians and spreads of repeated measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return float(data[low] + (data[high] - data[low]) * (pos - low))


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """p50, p99, max, mean and count of a sample (latencies, times)."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
        "n": len(values),
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of repeated measurements of one figure, and the repeats."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": []}
    return {"median": percentile(clean, 50), "min": min(clean), "max": max(clean), "runs": clean}


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_spread(s: dict[str, Any], digits: int = 1) -> str:
    """`median [min-max]` (just the value when there was one run)."""
    if len(s.get("runs", [])) <= 1:
        return fmt(s.get("median"), digits)
    return f"{fmt(s['median'], digits)} [{fmt(s['min'], digits)}-{fmt(s['max'], digits)}]"
