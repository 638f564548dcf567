"""`render_report`: one self-contained HTML page about a job's output rows.

Sections: summary (the job's `_SUCCESS.json` or any dict), metrics, output lengths, latency,
throughput over time, error rows, and a sample of inputs beside outputs. A section whose
columns are absent is left out with a one-line note, so the page works for every task and
for partial outputs. The page has no external assets: CSS inline, plots as data URIs.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import pyarrow as pa

from llm_core.report import charts, tables


@dataclass(frozen=True)
class ReportColumns:
    """Names of the output-row columns the report reads; only `output` must exist."""

    id: str = "id"
    output: str = "output"  # "summary", "translation", "label" or "output" by task
    error: str = "error"
    finish_reason: str = "finish_reason"
    prompt_tokens: str = "prompt_tokens"
    completion_tokens: str = "completion_tokens"
    latency: str = "latency_s"
    finished_at: str = "finished_at"
    input: str = "text"  # read only when `inputs` is not passed and the column exists


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #1f77b4; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #1f77b4; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
table.sample td { white-space: pre-wrap; max-width: 480px; }
table.confusion td { text-align: right; }
img { max-width: 100%; }
.note { color: #666; font-style: italic; }
"""


def _column(rows: pa.Table, name: str) -> list[Any] | None:
    return rows.column(name).to_pylist() if name in rows.column_names else None


def _per_completion(counts: list[Any], reasons: list[Any] | None) -> tuple[list[Any], list[Any] | None]:
    """Token counts (and finish reasons) one per completion: with params.n > 1 a row holds a
    list of each, so its completions count one by one."""
    if not any(isinstance(c, list) for c in counts):
        return counts, reasons
    flat_counts, flat_reasons = [], []
    for i, row in enumerate(counts):
        row_reasons = reasons[i] if reasons is not None else None
        for j, tokens in enumerate(row or []):
            flat_counts.append(tokens)
            flat_reasons.append(row_reasons[j] if isinstance(row_reasons, list) and j < len(row_reasons) else None)
    return flat_counts, flat_reasons if reasons is not None else None


def _row_total(value: Any) -> Any:
    return sum(v or 0 for v in value) if isinstance(value, list) else value


def _shown(value: Any) -> Any:
    """A row's outputs (or finish reasons) as one text: a list (params.n > 1) numbered."""
    if not isinstance(value, list):
        return value
    return "\n".join(f"[{j + 1}] {item}" for j, item in enumerate(value))


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _image(data_uri: str, alt: str) -> str:
    return f'<img src="{data_uri}" alt="{html.escape(alt)}">'


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def _length_section(rows: pa.Table, columns: ReportColumns) -> str:
    completion = _column(rows, columns.completion_tokens)
    if completion is None:
        return _note(f"No '{columns.completion_tokens}' column.")
    completion, reasons = _per_completion(completion, _column(rows, columns.finish_reason))
    kept = [i for i, tokens in enumerate(completion) if tokens is not None]
    if not kept:
        return _note("No row has a token count.")
    lengths = [completion[i] for i in kept]
    kept_reasons = [reasons[i] for i in kept] if reasons is not None else None
    parts = [_image(charts.output_length_histogram(lengths, kept_reasons), "output length histogram")]
    prompt = _column(rows, columns.prompt_tokens)
    totals = [["completion tokens", sum(lengths)]]
    if prompt is not None:
        totals.insert(0, ["prompt tokens", sum(tokens or 0 for tokens in prompt)])
    parts.append(tables.html_table(["", "total"], totals))
    return "\n".join(parts)


def _latency_section(rows: pa.Table, columns: ReportColumns) -> str | None:
    latencies = _column(rows, columns.latency)
    if latencies is None:
        return None
    values = sorted(value for value in latencies if value is not None)
    if not values:
        return _note("No row has a latency.")
    quantiles = [
        [name, _percentile(values, q)] for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    ]
    return "\n".join(
        [
            _image(charts.latency_histogram(values), "latency histogram"),
            tables.html_table(["quantile", "seconds"], quantiles + [["max", values[-1]]]),
        ]
    )


def _throughput_section(rows: pa.Table, columns: ReportColumns) -> str | None:
    finished = _column(rows, columns.finished_at)
    completion = _column(rows, columns.completion_tokens)
    if finished is None or completion is None:
        return None
    pairs = [(charts.to_epoch_seconds(f), _row_total(c) or 0) for f, c in zip(finished, completion) if f is not None]
    if not pairs:
        return _note("No row has a finish time.")
    times, tokens = zip(*pairs)
    return _image(charts.throughput_over_time(times, tokens), "tokens per second over time")


def _errors_section(rows: pa.Table, ids: list[Any], columns: ReportColumns) -> str:
    errors = _column(rows, columns.error)
    if errors is None:
        return _note(f"No '{columns.error}' column.")
    failed = [i for i, error in enumerate(errors) if error is not None]
    if not failed:
        return _note("No error rows.")
    return tables.error_tables([ids[i] for i in failed], [str(errors[i]) for i in failed])


def _sample_section(
    rows: pa.Table,
    ids: list[Any],
    inputs: Sequence[str | None] | None,
    columns: ReportColumns,
    size: int,
) -> str:
    count = rows.num_rows
    if count == 0:
        return _note("No rows.")
    # Evenly spaced rather than the first rows: output files are often sorted by length or id.
    picked = sorted({i * count // min(size, count) for i in range(min(size, count))})
    outputs = rows.column(columns.output).to_pylist()
    errors = _column(rows, columns.error) or [None] * count
    reasons = _column(rows, columns.finish_reason) or [None] * count
    notes = [str(errors[i]) if errors[i] is not None else (_shown(reasons[i]) or "") for i in picked]
    return tables.sample_table(
        [ids[i] for i in picked],
        [inputs[i] for i in picked] if inputs is not None else None,
        [None if outputs[i] is None else str(_shown(outputs[i])) for i in picked],
        notes,
    )


def render_report(
    rows: pa.Table,
    metrics: dict | None = None,
    summary: dict | None = None,
    *,
    columns: ReportColumns = ReportColumns(),
    inputs: Sequence[str | None] | None = None,
    title: str = "llmbatch report",
    sample_size: int = 20,
) -> str:
    """The report as one HTML document. `inputs`, if given, lines up with `rows`."""
    if columns.output not in rows.column_names:
        raise ValueError(f"output column {columns.output!r} not in {rows.column_names}")
    if inputs is None:
        inputs = _column(rows, columns.input)
    elif len(inputs) != rows.num_rows:
        raise ValueError(f"{len(inputs)} inputs for {rows.num_rows} rows")
    ids = _column(rows, columns.id) or list(range(rows.num_rows))

    sections: list[tuple[str, str | None]] = [
        ("Summary", tables.html_table(["key", "value"], tables.flatten(summary)) if summary else None),
        ("Metrics", tables.metrics_tables(metrics) if metrics else _note("No metrics given.")),
        ("Output length", _length_section(rows, columns)),
        ("Latency", _latency_section(rows, columns)),
        ("Throughput", _throughput_section(rows, columns)),
        ("Errors", _errors_section(rows, ids, columns)),
        (
            f"Sample of up to {sample_size} rows",
            _sample_section(rows, ids, inputs, columns, sample_size),
        ),
    ]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        f"<section><h2>{html.escape(name)}</h2>\n{content}</section>"
        for name, content in sections
        if content is not None
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n"
        f'<p class="note">{rows.num_rows} rows; generated {generated}.</p>\n'
        f"{body}\n</body></html>\n"
    )
