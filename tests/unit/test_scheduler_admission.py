"""Admission (priority, per-queue limits, free resources), cron schedules, and how a run's report
becomes the job's next state (partial ends it, a failed run is retried), against a real store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from jobs.lifecycle import JobState
from jobs.service import cron as schedules
from jobs.service.auth import Principal
from jobs.service.outcome import reported, tenant_summary
from jobs.service.queue import Admission, enqueue, parse_limits
from jobs.service.scheduler import Scheduler, SchedulerConfig
from jobs.service.store.job_store import NewJob, Store
from jobs.service.store.tables import schedules as schedules_table


def j(id, queue="default", cpus=1.0, gpus=0.0):
    return {"id": id, "queue": queue, "cpus": cpus, "gpus": gpus}


def test_admission_respects_queue_limits_and_free_resources():
    adm = Admission(limits={"small": 1}, default_limit=3)
    queued = [j("a", "small"), j("b", "small"), j("c", cpus=4), j("d"), j("e", gpus=1)]
    picked = adm.pick(queued, running_per_queue={"default": 1}, free={"CPU": 3.0, "GPU": 0.0})
    # b: small queue is full after a; c: needs 4 CPUs; e: no GPU free. d fits behind c.
    assert [p["id"] for p in picked] == ["a", "d"]
    assert adm.pick(queued, {"small": 1, "default": 3}, {"CPU": 64, "GPU": 8}) == []


def test_parse_limits():
    assert parse_limits(["gpu=1", "batch=8"]) == {"gpu": 1, "batch": 8}
    with pytest.raises(ValueError):
        parse_limits(["nope"])


def test_expand_placeholders():
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    assert schedules.expand_uri("s3://b/{date}/{datetime}/{run_id}/{other}", when=when, run_id="job-1") == \
        "s3://b/2026-03-04/20260304T050607Z/job-1/{other}"


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/jobs.db")
    yield s
    s.close()


ALICE = Principal("alice", ("*",), ("*",))


def request(tmp_path):
    return {"manifest": {"name": "nightly", "task": "summarize", "input": {"uri": str(tmp_path / "in")},
                         "output": {"uri": str(tmp_path / "out" / "{date}" / "{run_id}")}}}


def _make(store, tmp_path, on_missed, next_run_at):
    sch, _ = schedules.create(store, name="nightly", owner="alice", cron="0 2 * * *", on_missed=on_missed,
                              request=request(tmp_path))
    with store.engine.begin() as conn:
        conn.execute(update(schedules_table).where(schedules_table.c.id == sch["id"]).values(next_run_at=next_run_at))
    return sch


def test_missed_periods_run_once_or_are_skipped(store, tmp_path):
    now = datetime(2026, 5, 10, 12, 0, tzinfo=timezone.utc)
    three_days_ago = datetime(2026, 5, 7, 2, 0, tzinfo=timezone.utc)  # down for 3 periods
    once = _make(store, tmp_path, "run_once", three_days_ago)
    _make(store, tmp_path, "skip", three_days_ago)
    runs = schedules.due_runs(store, now)
    assert [(s["id"], p) for s, p in runs] == [(once["id"], datetime(2026, 5, 10, 2, 0, tzinfo=timezone.utc))]
    assert schedules.due_runs(store, now) == []  # advanced: nothing due until tomorrow 02:00
    assert all(s["next_run_at"] == datetime(2026, 5, 11, 2, 0, tzinfo=timezone.utc) for s in schedules.list_all(store))


def test_on_time_period_runs_and_overlapping_run_is_not_started(store, tmp_path):
    due = datetime(2026, 5, 10, 2, 0, tzinfo=timezone.utc)
    sch = _make(store, tmp_path, "skip", due)
    [(s, period)] = schedules.due_runs(store, due + timedelta(seconds=5))  # on time: not "missed"
    job, created = enqueue(store, ALICE, s["request"], when=period, schedule_id=s["id"],
                           idempotency_key=schedules.run_key(s["id"], period))
    assert created and job["manifest"]["output"]["uri"].endswith(f"/2026-05-10/{job['id']}")
    again, created_again = enqueue(store, ALICE, s["request"], when=period, schedule_id=s["id"],
                                   idempotency_key=schedules.run_key(s["id"], period))
    assert not created_again and again["id"] == job["id"]  # one job per period, whoever asks
    # Next day the first run is still queued: the period is skipped, not stacked.
    assert schedules.due_runs(store, datetime(2026, 5, 11, 2, 0, 5, tzinfo=timezone.utc)) == []
    assert len(store.list_jobs(schedule_id=sch["id"])) == 1


def test_two_processes_advance_a_schedule_once(store, tmp_path):
    _make(store, tmp_path, "run_once", datetime(2026, 5, 10, 2, 0, tzinfo=timezone.utc))
    other = Store(store.url, run_migrations=False)
    now = datetime(2026, 5, 10, 2, 0, 1, tzinfo=timezone.utc)
    assert len(schedules.due_runs(store, now)) + len(schedules.due_runs(other, now)) == 1


def _running(store, sched, max_attempts=3) -> dict:
    job, _ = store.submit(NewJob(name="n", owner="alice", manifest={"name": "n"}, request_hash="h",
                                 max_attempts=max_attempts, retry_backoff_s=5.0))
    return store.claim(job["id"], sched.id, lease_s=60)


def test_a_runs_report_decides_the_next_state_and_only_failed_runs_are_retried(store):
    """The scheduler's reading of a runner's report (its wire dict), against a real store."""
    sched = Scheduler(store, SchedulerConfig())
    reasons = ["shard 3 skipped: engine died (pid=4242, ip=10.1.2.3)", "error rate 9% above 0%"]

    def end(row: dict, report: dict) -> dict:
        status, error = reported(report)
        sched._end(row, status, error=error, summary=tenant_summary(report.get("summary")),
                   output_uri=report.get("output_uri"))
        return store.get(row["id"])

    partial = end(_running(store, sched), {"status": "partial", "error": "; ".join(reasons), "output_uri": "/o",
                                           "summary": {"rows": 9, "reasons": reasons}})
    assert (partial["state"], partial["failures"], partial["output_uri"]) == ("partial", 0, "/o")  # attempts left, no retry
    assert partial["summary"]["reasons"] == ["shard 3 skipped: engine died (pid=<pid>, ip=<ip>)", reasons[1]]
    assert "10.1.2.3" not in partial["error"]
    assert store.events(partial["id"])[-1]["message"] == "partial: " + "; ".join(partial["summary"]["reasons"])
    failed = end(_running(store, sched), {"status": "failed", "error": "boom", "summary": {}})
    assert (failed["state"], failed["failures"], failed["error"]) == ("queued", 1, "boom")  # retried
    last = end(_running(store, sched, max_attempts=1), {"status": "failed", "error": "boom"})
    assert (last["state"], last["failures"]) == ("failed", 1)
    odd = end(_running(store, sched, max_attempts=1), {"status": "half-done", "error": None})
    assert odd["state"] == "failed" and "unknown status 'half-done'" in odd["error"]
    row = _running(store, sched)
    store.request_cancel(row["id"])  # a cancel wins over the run's own outcome
    cancelled = end(store.get(row["id"]), {"status": "partial", "error": "x", "summary": {"reasons": ["x"]}})
    assert cancelled["state"] == JobState.CANCELLED
