"""The progress display of a job (rich): shards, rows, tokens/s; the closing summary table."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.run.results import JobProgress, JobResult


class ProgressDisplay:
    """`with ProgressDisplay(name) as show: show.update(progress)` draws a live bar on stderr."""

    def __init__(self, name: str, enabled: bool = True):
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("shards"), TextColumn("{task.fields[rows]} rows"),
            TextColumn("{task.fields[errors]} errors"), TextColumn("{task.fields[tps]:.1f} tok/s"),
            TimeElapsedColumn(), console=self.console, transient=False, disable=not enabled,
        )
        self.task = self.progress.add_task(name, total=None, rows=0, errors=0, tps=0.0)

    def __enter__(self) -> "ProgressDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, p: JobProgress) -> None:
        self.progress.update(
            self.task, total=p.shards_total or None, completed=p.shards_done + p.shards_skipped + p.shards_failed,
            rows=p.rows, errors=p.error_rows, tps=p.tokens_per_s,
        )


def print_summary(result: JobResult, file=None) -> None:
    console = Console(file=file or sys.stdout)
    s = result.summary
    table = Table(title=f"job {s.get('job_id', '')}: {result.status}", show_header=False)
    if "steps" in s:  # a training job
        _training_rows(table, result)
        console.print(table)
        return
    rows = [
        ("rows", s.get("rows")), ("error rows", s.get("error_rows")),
        ("generated tokens", s.get("completion_tokens")), ("tokens/s", s.get("tokens_per_s")),
        ("shards", f"{s.get('shards_committed', 0)} committed now, {s.get('shards_skipped', 0)} resumed, "
                   f"{s.get('shards_failed', 0)} failed of {s.get('shards_total', 0)}"),
        ("wall time", f"{s.get('wall_s', 0):.1f} s"), ("output", result.output_uri),
    ]
    metrics = s.get("metrics")
    if isinstance(metrics, dict):
        from jobs.evaluation.scoring import main_figures

        figures = ", ".join(f"{name} {value}" for name, value in main_figures(metrics))
        rows.append(("metrics", f"{figures} ({metrics.get('scored', 0)} rows scored)"))
    if result.error:
        rows.append(("error", result.error))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


def _training_rows(table: Table, result: JobResult) -> None:
    s = result.summary
    rows = [
        ("steps", s.get("steps")), ("loss", f"{s.get('first_loss')} -> {s.get('last_loss')}"),
        ("eval", s.get("eval")), ("resumed from step", s.get("resumed_from")),
        ("wall time", f"{s.get('wall_s', 0):.1f} s"), ("model folder", result.output_uri),
    ]
    if result.error:
        rows.append(("error", result.error))
    for key, value in rows:
        table.add_row(key, str(value))
