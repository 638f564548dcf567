"""The progress display of a job (rich): rows done of the job's total, error rows, tokens/s and
an ETA, or training steps and loss; the closing summary table.

The live display holds the bottom of the terminal: while it runs, rich stands in for stderr, so
log lines (cluster.logs writes to the current sys.stderr) print above it, never into its line.
On a terminal that is not one (a file, CI) nothing is drawn: stderr keeps only the JSON lines.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobs.evaluation.scoring import main_figures
from jobs.run.results import JobProgress, JobResult


class ProgressDisplay:
    """`with ProgressDisplay(name) as show: show.update(progress)` draws a live bar on stderr."""

    def __init__(self, name: str, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
            console=self.console, transient=False, disable=not self.enabled,
            redirect_stdout=True, redirect_stderr=True,
        )
        self.task = self.progress.add_task(name, total=None, unit="rows", detail="", eta="")

    def __enter__(self) -> "ProgressDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, p: JobProgress) -> None:
        if p.training:
            total, completed, unit = p.total_steps, p.step or 0, "steps"
        elif p.rows_total:
            total, completed, unit = p.rows_total, p.rows, "rows"
        else:  # the plan's row count is not known yet
            total, completed, unit = p.shards_total, p.shards_done + p.shards_skipped + p.shards_failed, "shards"
        self.progress.update(self.task, total=total or None, completed=completed, unit=unit,
                             detail=detail(p), eta=eta_text(p))


def detail(p: JobProgress) -> str:
    if p.training:
        loss = p.values.get("loss")
        return f"loss {loss:.4f} {p.tokens_per_s:.0f} tok/s" if loss is not None else ""
    errors = f"{p.error_rows} error rows" if p.error_rows != 1 else "1 error row"
    return f"{errors}  {p.tokens_per_s:.1f} tok/s"


def eta_text(p: JobProgress) -> str:
    """"ETA 0:01:05" once the run has a pace; empty before (and for training)."""
    if p.training or p.eta_s is None or p.phase == "done":
        return ""
    seconds = max(int(round(p.eta_s)), 0)
    return f"ETA {seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def print_summary(result: JobResult, file=None) -> None:
    console = Console(file=file or sys.stdout)
    s = result.summary
    table = Table(title=f"job {s.get('job_id', '')}: {result.status}", show_header=False)
    rows = _training_rows(result) if "steps" in s else _inference_rows(result)
    if result.error:
        rows.append(("error", result.error))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


def _inference_rows(result: JobResult) -> list[tuple[str, object]]:
    s = result.summary
    rows = [
        ("rows", s.get("rows")), ("error rows", s.get("error_rows")),
        ("generated tokens", s.get("completion_tokens")), ("tokens/s", s.get("tokens_per_s")),
        ("shards", f"{s.get('shards_committed', 0)} committed now, {s.get('shards_skipped', 0)} resumed, "
                   f"{s.get('shards_failed', 0)} failed of {s.get('shards_total', 0)}"),
        ("wall time", f"{s.get('wall_s', 0):.1f} s"), ("output", result.output_uri),
    ]
    if s.get("actor_log"):  # a local run on a terminal: the actors' lines went to this file
        rows.append(("actor log", s["actor_log"]))
    metrics = s.get("metrics")
    if isinstance(metrics, dict):
        figures = ", ".join(f"{name} {value}" for name, value in main_figures(metrics))
        rows.append(("metrics", f"{figures} ({metrics.get('scored', 0)} rows scored)"))
    return rows


def _training_rows(result: JobResult) -> list[tuple[str, object]]:
    s = result.summary
    resumed = s.get("resumed_from") or []  # the step of each resume, in order
    return [
        ("steps", s.get("steps")), ("loss", f"{_figure(s.get('first_loss'))} -> {_figure(s.get('last_loss'))}"),
        ("eval", ", ".join(f"{k} {_figure(v)}" for k, v in (s.get("eval") or {}).items()) or "-"),
        ("resumed from step", ", ".join(str(step) for step in resumed) or "- (a fresh run)"),
        ("wall time", f"{s.get('wall_s', 0):.1f} s"), ("model folder", result.output_uri),
    ]


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
