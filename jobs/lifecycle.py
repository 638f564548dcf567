"""The job lifecycle: every state a job can be in and the moves between them, as data.

Store, scheduler, runners, API, client and CLI all use `JobState`; adding a state is one edit
here (the enum member and its transitions; a state with no way out is terminal). A move not
listed in `TRANSITIONS` raises `IllegalTransition`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # ended with a published snapshot that is not whole: skipped shards, too many error rows, deadline
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # running -> queued: the run failed or its runner was lost, and the job is run again.
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLING,
                                 JobState.CANCELLED, JobState.QUEUED}),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.PARTIAL: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

# The exit code of `llmbatch run` / `wait` for a job that ended in each terminal state; 2 is a
# manifest or pre-flight refusal (no job ran), kept apart from every outcome of a run.
EXIT_CODES: dict[JobState, int] = {
    JobState.SUCCEEDED: 0, JobState.FAILED: 1, JobState.PARTIAL: 3, JobState.CANCELLED: 130,
}
EXIT_REFUSED = 2


def exit_code(state: str | JobState) -> int:
    """The process exit code for a job that ended in `state` (a state that is not terminal: 1)."""
    return EXIT_CODES.get(JobState(state), 1)


INITIAL_STATE = JobState.QUEUED  # what a submitted job starts as
# A runner exists and one scheduler process holds the job's lease.
RUNNER_STATES: tuple[JobState, ...] = (JobState.RUNNING, JobState.CANCELLING)
TERMINAL_STATES: tuple[JobState, ...] = tuple(s for s in JobState if s.terminal)
ACTIVE_STATES: tuple[JobState, ...] = tuple(s for s in JobState if not s.terminal)


def shards_finished(progress: dict) -> int:
    """Shards of a job's progress committed by this run or an earlier one (resume), or given up on."""
    return sum(int(progress.get(k) or 0) for k in ("shards_done", "shards_skipped", "shards_failed"))


class IllegalTransition(ValueError):
    """A move the lifecycle does not allow (a bug in the caller, or a race it lost)."""

    def __init__(self, current: str, target: str):
        super().__init__(f"a job cannot go from {current!r} to {target!r}")
        self.current, self.target = current, target

    def __reduce__(self):  # crosses Ray boundaries: rebuild from the same arguments
        return (IllegalTransition, (self.current, self.target))


def check_transition(current: str | JobState, target: str | JobState) -> JobState:
    """The target as a JobState, or IllegalTransition when the lifecycle forbids the move."""
    current, target = JobState(current), JobState(target)
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current.value, target.value)
    return target


def allowed_sources(target: str | JobState, among: Iterable[JobState] | None = None) -> tuple[JobState, ...]:
    """The states from which `target` may be entered, for a guarded `UPDATE ... WHERE state IN`.

    With `among`, only those of them that may (the caller's own narrower guard, e.g. only the
    states that hold a lease); an empty answer means the caller asks for an illegal move.
    """
    target = JobState(target)
    candidates = tuple(JobState) if among is None else tuple(JobState(s) for s in among)
    sources = tuple(s for s in candidates if target in TRANSITIONS[s])
    if not sources:
        raise IllegalTransition("|".join(s.value for s in candidates), target.value)
    return sources
