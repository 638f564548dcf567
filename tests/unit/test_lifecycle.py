"""The job lifecycle as data: which moves are allowed, which states are terminal, and that the
guard the store builds its UPDATEs from agrees with the table."""

from __future__ import annotations

import pickle

import pytest

from jobs.lifecycle import (
    ACTIVE_STATES,
    INITIAL_STATE,
    RUNNER_STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransition,
    JobState,
    allowed_sources,
    check_transition,
    exit_code,
)

Q, R, CI, S, P, F, C = (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING, JobState.SUCCEEDED,
                        JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED)
ALLOWED = {(Q, R), (Q, C), (Q, F), (R, S), (R, P), (R, F), (R, CI), (R, C), (R, Q), (CI, C), (CI, S), (CI, P),
           (CI, F)}


def test_transition_table():
    assert set(TRANSITIONS) == set(JobState)  # every state says where it may go
    for current in JobState:
        for target in JobState:
            if (current, target) in ALLOWED:
                assert check_transition(current.value, target.value) is target
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(current, target)


def test_terminal_active_and_runner_states():
    assert set(TERMINAL_STATES) == {S, P, F, C} and all(s.terminal for s in TERMINAL_STATES)
    assert set(ACTIVE_STATES) == {Q, R, CI} and INITIAL_STATE is Q
    assert set(RUNNER_STATES) <= set(ACTIVE_STATES)
    assert [s.value for s in JobState] == ["queued", "running", "cancelling", "succeeded", "partial", "failed",
                                           "cancelled"]


def test_each_outcome_has_its_own_exit_code():
    codes = {state: exit_code(state) for state in TERMINAL_STATES}
    assert codes == {S: 0, F: 1, P: 3, C: 130}
    assert len(set(codes.values())) == len(codes) and 2 not in codes.values()  # 2: refused before any run


def test_allowed_sources_is_the_table_read_backwards():
    for target in JobState:
        expected = {s for s, t in ALLOWED if t is target}
        if expected:
            assert set(allowed_sources(target)) == expected
    assert allowed_sources(JobState.QUEUED, among=RUNNER_STATES) == (R,)  # cancelling never re-queues
    with pytest.raises(IllegalTransition):
        allowed_sources(JobState.RUNNING, among=RUNNER_STATES)
    with pytest.raises(ValueError):
        check_transition("queued", "partial-ish")  # not a state at all


def test_illegal_transition_survives_pickle():
    err = pickle.loads(pickle.dumps(IllegalTransition("failed", "running")))
    assert (err.current, err.target, str(err)) == ("failed", "running", "a job cannot go from 'failed' to 'running'")
