"""How the remote commands write a job's figures (the API's JobOut fields) in one line each."""

from __future__ import annotations

from jobs.api.job_view import duration_text

__all__ = ["duration_text", "rows_text", "short_rows"]


def rows_text(job: dict) -> str:
    """"1,234/2,000 rows, 12 errors" (the parts known so far); "-" before any row is counted."""
    rows, total, errors = job.get("rows"), job.get("rows_total"), job.get("error_rows")
    if rows is None and total is None:
        return "-"
    text = f"{rows or 0:,}" + (f"/{total:,}" if total is not None else "") + " rows"
    return text + (f", {errors:,} errors" if errors else "")


def short_rows(job: dict) -> str:
    """"1234/2000" for a table column."""
    rows, total = job.get("rows"), job.get("rows_total")
    if rows is None and total is None:
        return "-"
    return f"{rows or 0}/{total}" if total is not None else f"{rows or 0}"
