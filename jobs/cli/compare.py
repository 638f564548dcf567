"""`llmbatch compare A B ...`: outputs' scores side by side, and a few of their rows.

Reads each output's `_metrics.json` (written by a job's `evaluate:` block or `llmbatch eval`) and
its published snapshot (never a running run's parts), so a before/after comparison of two models
on the same input is one command (`make finetune-demo` ends with it)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from llm_core.tasks import OUTPUT_COLUMN

if TYPE_CHECKING:  # pyarrow and the storage layer load only when compare runs (seconds, for every command)
    from workers.output.location import OutputLocation

TEXT_CHARS = 90  # of the input text shown per row


def register(sub: argparse._SubParsersAction) -> None:
    cmp = sub.add_parser("compare", help="scores (_metrics.json) of outputs side by side, and a few rows of each")
    cmp.add_argument("outputs", nargs="+", metavar="OUTPUT_URI", help="two or more output locations")
    cmp.add_argument("--rows", type=int, default=5, help="rows shown side by side (0: none)")
    cmp.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    if len(args.outputs) < 2:
        print("error: name at least two outputs", file=sys.stderr)
        return 2
    from workers.output.location import OutputLocation

    locations = [OutputLocation.at(uri) for uri in args.outputs]
    metrics = [loc.read_metrics() for loc in locations]
    missing = [uri for uri, m in zip(args.outputs, metrics) if not m]
    if missing:
        print(f"error: no _metrics.json in {', '.join(missing)}: give the job an evaluate: block, or run "
              "llmbatch eval on it first", file=sys.stderr)
        return 1
    console = Console()
    console.print(scores_table(args.outputs, metrics))
    if args.rows > 0:
        try:
            console.print(rows_table(args.outputs, locations, args.rows))
        except (OSError, ValueError, KeyError) as exc:
            print(f"(rows not shown: {exc})", file=sys.stderr)
    return 0


def scores_table(names: list[str], metrics: list[dict]) -> Table:
    table = Table(title="scores")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    keys = [k for k, v in metrics[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        cells = []
        for m in metrics:
            value = m.get(key)
            cells.append("-" if value is None else f"{value:.2f}" if key in ("bleu", "chrf")
                         else f"{value:.4f}" if isinstance(value, float) else str(value))
        table.add_row(key, *cells)
    return table


def rows_table(names: list[str], locations: list[OutputLocation], n: int) -> Table:
    """The first `n` ids of the first output, with each output's answer for the same id."""
    columns = [_answers(loc) for loc in locations]
    ids = list(columns[0])[:n]
    table = Table(title=f"first {len(ids)} rows", show_lines=True)
    table.add_column("id")
    for name in names:
        table.add_column(name)
    for row_id in ids:
        table.add_row(str(row_id), *[str(c.get(row_id, "-")) for c in columns])
    return table


def _answers(location: OutputLocation) -> dict:
    """id -> output column (or the error) of an output's published snapshot, in its order."""
    manifest = (location.read_manifest() or {}).get("manifest") or {}
    task = (manifest.get("task") or {}).get("kind", "generate")
    id_column = (manifest.get("input") or {}).get("id_column", "id")
    column = OUTPUT_COLUMN.get(task, "output")
    table = location.read_snapshot()
    ids, outs = table.column(id_column).to_pylist(), table.column(column).to_pylist()
    errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * len(ids)
    return {i: (o if o is not None else f"[error] {e}") for i, o, e in zip(ids, outs, errors)}
