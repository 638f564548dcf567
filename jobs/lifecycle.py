"""The job lifecycle: every state a job can be in and the moves between them, as data.

Store, scheduler, runners, API, client and CLI all use `JobState`; adding a state is one edit
here (the enum member, its transitions, and whether it is terminal). A move not listed in
`TRANSITIONS` raises `IllegalTransition`.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    # running -> queued: the runner died and the job is retried (attempts left).
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLING,
                                 JobState.CANCELLED, JobState.QUEUED}),
    JobState.CANCELLING: frozenset({JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

TERMINAL_STATES: tuple[JobState, ...] = tuple(s for s in JobState if s.terminal)
ACTIVE_STATES: tuple[JobState, ...] = tuple(s for s in JobState if not s.terminal)


class IllegalTransition(ValueError):
    def __init__(self, current: str, target: str):
        super().__init__(f"a job cannot go from {current!r} to {target!r}")
        self.current, self.target = current, target

    def __reduce__(self):  # crosses Ray boundaries: rebuild from the same arguments
        return (IllegalTransition, (self.current, self.target))


def allowed_sources(target: JobState) -> tuple[JobState, ...]:
    """States from which `target` may be entered (for guarded UPDATE ... WHERE state IN (...))."""
    return tuple(s for s, nexts in TRANSITIONS.items() if target in nexts)


def check_transition(current: str | JobState, target: str | JobState) -> JobState:
    """The target as a JobState, or IllegalTransition when the lifecycle forbids the move."""
    current, target = JobState(current), JobState(target)
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current.value, target.value)
    return target
