"""How a runner's report becomes what the store records: the state it names, and the text a
tenant reads (the error and a partial run's reasons, without the cluster's internals)."""

from __future__ import annotations

from jobs.lifecycle import JobState
from jobs.service.error_text import tenant_error


def reported(result: dict) -> tuple[JobState, str | None]:
    """The state a runner reported (the wire shape's `status`) and its error."""
    try:
        return JobState(result.get("status")), result.get("error")
    except ValueError:  # not a state: a broken runner, which counts as a failed run
        return JobState.FAILED, f"runner reported an unknown status {result.get('status')!r}: {result.get('error')}"


def tenant_summary(summary: dict | None) -> dict | None:
    """The run's summary as stored and served; its `reasons` (why a run is partial) pass through
    tenant_error like the error does. None for an empty summary (nothing to record)."""
    if not summary:
        return None
    reasons = summary.get("reasons")
    if isinstance(reasons, list):
        return {**summary, "reasons": [tenant_error(str(r)) for r in reasons]}
    return summary


def partial_message(summary: dict | None, error: str | None) -> str:
    """The event line of a partial end: `partial: <reasons>` (else its error)."""
    reasons = [str(r) for r in (summary or {}).get("reasons") or []]
    return f"{JobState.PARTIAL.value}: {'; '.join(reasons) or error or 'not every row has an output'}"
