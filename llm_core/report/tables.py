"""HTML tables for the report. Every cell goes through `html.escape`: outputs are model text
and inputs are user data, and neither may inject markup into the page."""

from __future__ import annotations

import html
from collections import Counter
from typing import Any, Sequence


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], css_class: str = "") -> str:
    class_attribute = f' class="{html.escape(css_class)}"' if css_class else ""
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_value(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table{class_attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys, so a `_SUCCESS.json` reads as one two-column table."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(flatten(value, f"{name}."))
        else:
            items.append((name, value))
    return items


def metrics_tables(metrics: dict) -> str:
    """Scalar metrics and counts in one table; per-label scores and the confusion matrix apart."""
    scalars = [(name, value) for name, value in metrics.items() if not isinstance(value, (dict, list))]
    parts = [html_table(["metric", "value"], scalars, "metrics")]
    per_label = metrics.get("per_label")
    if isinstance(per_label, dict) and per_label:
        rows = [
            [label, scores["precision"], scores["recall"], scores["f1"], scores["support"]]
            for label, scores in per_label.items()
        ]
        parts.append("<h3>Per label</h3>")
        parts.append(html_table(["label", "precision", "recall", "F1", "support"], rows))
    matrix = metrics.get("confusion_matrix")
    if isinstance(matrix, dict) and matrix.get("labels"):
        parts.append("<h3>Confusion matrix (rows: reference, columns: predicted)</h3>")
        parts.append(confusion_matrix_table(matrix["labels"], matrix["matrix"]))
    return "\n".join(parts)


def confusion_matrix_table(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """Cells shaded by their share of the row, so the mistakes stand out at a glance."""
    head = "<th></th>" + "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    body = []
    for label, row in zip(labels, matrix):
        row_total = sum(row) or 1
        cells = "".join(
            f'<td style="background: rgba(31, 119, 180, {count / row_total:.2f})">{count}</td>'
            for count in row
        )
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    rows_html = "".join(body)
    return f'<table class="confusion"><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>'


def error_tables(ids: Sequence[Any], errors: Sequence[str], max_rows: int = 50) -> str:
    """Errors grouped by message (most frequent first), then the first `max_rows` error rows."""
    by_message = Counter(errors).most_common(20)
    parts = [
        html_table(
            ["error", "rows"], [[truncate(message, 300), count] for message, count in by_message]
        ),
        f"<h3>First {min(max_rows, len(errors))} of {len(errors)} error rows</h3>",
        html_table(
            ["id", "error"],
            [[row_id, truncate(error, 500)] for row_id, error in list(zip(ids, errors))[:max_rows]],
        ),
    ]
    return "\n".join(parts)


def sample_table(
    ids: Sequence[Any],
    inputs: Sequence[str | None] | None,
    outputs: Sequence[str | None],
    notes: Sequence[str],
    text_limit: int = 800,
) -> str:
    """Inputs beside outputs; `notes` carries the finish reason or the error of each row."""
    header = ["id", "output", "finish / error"]
    if inputs is not None:
        header.insert(1, "input")
    rows = []
    for i, row_id in enumerate(ids):
        output = truncate(outputs[i] or "", text_limit)
        if inputs is not None:
            rows.append([row_id, truncate(inputs[i] or "", text_limit), output, notes[i]])
        else:
            rows.append([row_id, output, notes[i]])
    return html_table(header, rows, "sample")
