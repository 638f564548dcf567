"""The figures of one job that /metrics sums over jobs (the `counted` column), kept never lower.

A run's progress restarts some figures (a retry's or a resume's tokens and shard latency
histogram count that run only), and an ended job's summary counts its output, not the work of
runs that failed. A sum over jobs that drops looks to Prometheus like a counter reset (the whole
sum counted again as new), so each job contributes the most it has reported of each figure:
its own figures only grow, and the sum never drops while the store keeps the job.
"""

from __future__ import annotations

import math

FIGURES = ("rows", "error_rows", "completion_tokens", "shard_seconds_sum", "shard_seconds_count")
BUCKETS = "shard_seconds_buckets"  # {"<le>": cumulative count}; the most of each bucket stays cumulative


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _le(key) -> str | None:
    """A bucket bound written one way ("+Inf", "2.5", "60.0"); None if it is not a number."""
    try:
        bound = float(key)
    except (TypeError, ValueError):
        return None
    if math.isnan(bound):
        return None
    return "+Inf" if math.isinf(bound) else repr(bound)


def raised(counted: dict | None, report: dict | None) -> dict | None:
    """`counted` with each figure raised to the report's (a progress or a summary) where higher;
    None while neither has any figure."""
    out = dict(counted or {})
    report = report if isinstance(report, dict) else {}
    for key in FIGURES:
        value = _number(report.get(key))
        if value is not None and value > out.get(key, -1.0):
            out[key] = value
    if isinstance(report.get(BUCKETS), dict):
        buckets = dict(out.get(BUCKETS) or {})
        for key, n in report[BUCKETS].items():
            le, value = _le(key), _number(n)
            if le is not None and value is not None and value > buckets.get(le, -1.0):
                buckets[le] = value
        out[BUCKETS] = buckets
    return out or None
