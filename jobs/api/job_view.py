"""A job's outcome figures (and an ETA as text) as the API, the CLI and the status page show them.

An ended job's counts come from its summary (what its run published), falling back to its last
progress where the summary lacks one (a failed run publishes nothing); a job not ended shows its
latest progress, whose `rows` are whole-job (shards committed by an earlier run included).
"""

from __future__ import annotations

from jobs.lifecycle import JobState, exit_code

COUNTS = ("rows_total", "rows", "error_rows", "completion_tokens")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def figures(job: dict) -> dict:
    """{rows_total, rows, error_rows, completion_tokens, eta_s, reasons, exit_code} of a store row
    (each None, or [] for reasons, when unknown)."""
    state = JobState(job["state"])
    progress = job.get("progress") if isinstance(job.get("progress"), dict) else {}
    summary = job.get("summary") if isinstance(job.get("summary"), dict) and state.terminal else {}
    out: dict = {}
    for key in COUNTS:
        value = _number(summary.get(key))
        if value is None:
            value = _number(progress.get(key))
            if key == "rows_total" and not value:  # a run's progress says 0 until its plan is known
                value = None
        out[key] = None if value is None else int(value)
    eta = _number(progress.get("eta_s")) if not state.terminal else None
    out["eta_s"] = None if eta is None else round(max(eta, 0.0), 1)
    reasons = summary.get("reasons") if state == JobState.PARTIAL else None
    out["reasons"] = [str(r) for r in reasons] if isinstance(reasons, list) else []
    out["exit_code"] = exit_code(state) if state.terminal else None
    return out


def duration_text(seconds: float | None) -> str:
    """3725 -> "1h02m", 200 -> "3m20s", 45 -> "45s"; "-" when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"
