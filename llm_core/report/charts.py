"""The report's plots, each returned as a PNG `data:` URI so the HTML needs no other file.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, not pyplot:
pyplot keeps global state and picks a GUI backend, neither welcome inside a library that
may run in a worker thread on a headless node.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_FIGURE_SIZE = (7.0, 3.2)  # inches; at 100 dpi a 700 px wide image fits the page column
_DPI = 100


def figure_to_data_uri(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _new_axes(title: str, xlabel: str, ylabel: str):
    figure = Figure(figsize=_FIGURE_SIZE)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    return figure, axes


def output_length_histogram(
    completion_tokens: Sequence[int], finish_reasons: Sequence[str | None] | None = None
) -> str:
    """Completion lengths, stacked by finish reason: a pile at the cap means truncation."""
    figure, axes = _new_axes("Output length", "completion tokens", "rows")
    if finish_reasons is None:
        groups = {"all rows": list(completion_tokens)}
    else:
        groups: dict[str, list[int]] = {}
        for tokens, reason in zip(completion_tokens, finish_reasons):
            groups.setdefault(reason or "none", []).append(tokens)
    bins = min(50, max(5, len(set(completion_tokens))))
    labels = sorted(groups)
    axes.hist([groups[label] for label in labels], bins=bins, stacked=True, label=labels)
    axes.legend(title="finish reason" if finish_reasons is not None else None)
    return figure_to_data_uri(figure)


def latency_histogram(latencies_s: Sequence[float]) -> str:
    figure, axes = _new_axes("Latency per row", "seconds", "rows")
    axes.hist(list(latencies_s), bins=min(50, max(5, len(latencies_s) // 5)))
    return figure_to_data_uri(figure)


def to_epoch_seconds(value: object) -> float:
    """A `finished_at` value (datetime, epoch number or ISO-8601 string) as epoch seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    raise TypeError(f"cannot read a time from {value!r}")


def throughput_over_time(
    finished_at_s: Sequence[float], completion_tokens: Sequence[int], buckets: int = 30
) -> str:
    """Generated tokens per second in equal time buckets from the first to the last finish."""
    start, end = min(finished_at_s), max(finished_at_s)
    # One bucket per distinct second at most: finer buckets would just be noise.
    buckets = max(1, min(buckets, int(end - start)))
    width = (end - start) / buckets or 1.0
    totals = [0.0] * buckets
    for finished, tokens in zip(finished_at_s, completion_tokens):
        totals[min(int((finished - start) / width), buckets - 1)] += tokens
    figure, axes = _new_axes("Throughput over time", "seconds since first finished row", "tokens/s")
    centers = [(i + 0.5) * width for i in range(buckets)]
    axes.plot(centers, [total / width for total in totals], marker="o")
    axes.set_ylim(bottom=0)
    return figure_to_data_uri(figure)
