"""GET /metrics on a real store (SQLite and PostgreSQL) through the real app, parsed with
Prometheus' own text parser: queue depth, rows / error rows / tokens summed over jobs (ended
ones from their summary, others from their progress), the shard latency histogram summed over
jobs, job durations by end state; replicas agree, sums never drop, no label names a tenant."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import true, update

from jobs.api.app import create_app
from jobs.lifecycle import JobState
from jobs.service.auth import create_token
from jobs.service.store.job_metrics import SETTLE_S, FigureCache, read_figures
from jobs.service.store.job_store import NewJob, Store, utcnow
from jobs.service.store.tables import jobs

OWNERS = ("alice-tenant", "bob-tenant")


@pytest.fixture
def store(db_as_written):
    s = Store(db_as_written)
    yield s
    s.close()


def histogram(counts: dict[str, int], total: float) -> dict:
    """Progress fields of a shard latency histogram, cumulative counts keyed by bound as written."""
    return {"shard_seconds_sum": total, "shard_seconds_count": max(counts.values()), "shard_seconds_buckets": counts}


def add_job(store: Store, n: int, state: str, progress: dict | None = None, summary: dict | None = None,
            ran_s: float | None = None, ended_ago_s: float = 0.0) -> str:
    job, _ = store.submit(NewJob(name=f"job-{n}", owner=OWNERS[n % 2], manifest={}, request_hash=f"h{n}"))
    if state == "queued":
        return job["id"]
    if state == "cancelled" and progress is None:  # cancelled before it ever ran
        store.request_cancel(job["id"])
        return job["id"]
    store.claim(job["id"], "s1", lease_s=3600)
    if progress is not None:
        store.set_progress(job["id"], "s1", progress, event=False)
    if state != "running":
        store.finish(job["id"], "s1", state, message=state, summary=summary, failed_run=state == "failed")
    if ran_s is not None:
        end = utcnow() - timedelta(seconds=ended_ago_s)
        with store.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job["id"])
                         .values(started_at=end - timedelta(seconds=ran_s), finished_at=end))
    return job["id"]


def scrape(client: TestClient, token: str) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def job_figures(m: dict) -> dict:
    return {k: v for k, v in m.items() if not k[0].startswith("llmbatch_http")}


def test_job_figures_from_the_store(store):
    token = create_token(store, "prometheus", input_prefixes=[], output_prefixes=[])
    ids = [
        add_job(store, 0, "queued"), add_job(store, 1, "queued"),
        add_job(store, 2, "running", {"rows": 10, "error_rows": 1, "completion_tokens": 40,
                                      **histogram({"0.5": 1, "1.0": 2, "+Inf": 2}, 1.4)}),
        # Ended: the summary's figures count, not the (older) progress.
        add_job(store, 3, "partial", {"rows": 5, "error_rows": 0, "completion_tokens": 20,
                                      **histogram({"0.5": 0, "1": 1, "inf": 3}, 9.0)},
                {"rows": 30, "error_rows": 6, "completion_tokens": 120, "reasons": ["error rate"]}, ran_s=45),
        # A failed run published no summary: its progress counts.
        add_job(store, 4, "failed", {"rows": 7, "error_rows": 7, "completion_tokens": 0}, ran_s=700),
        add_job(store, 5, "succeeded", None, {"rows": 100, "error_rows": 0, "completion_tokens": 400}, ran_s=1000),
        add_job(store, 6, "cancelled"),
        add_job(store, 7, "running", {"phase": "starting", "shard_seconds_buckets": None, "rows": None}),
    ]
    m = scrape(TestClient(create_app(store)), token)
    assert m[("llmbatch_queue_depth", ())] == 2
    assert m[("llmbatch_jobs", (("state", "partial"),))] == 1 and m[("llmbatch_jobs", (("state", "running"),))] == 2
    assert m[("llmbatch_job_rows_total", ())] == 10 + 30 + 7 + 100
    assert m[("llmbatch_job_error_rows_total", ())] == 1 + 6 + 7
    assert m[("llmbatch_job_completion_tokens_total", ())] == 40 + 120 + 400
    assert m[("llmbatch_job_failed_runs_total", ())] == 1
    # Bounds written "1.0" or "1", "+Inf" or "inf" are one bucket.
    shard = {dict(k[1])["le"]: v for k, v in m.items() if k[0] == "llmbatch_shard_seconds_bucket"}
    assert shard == {"0.5": 1, "1.0": 3, "+Inf": 5}
    assert m[("llmbatch_shard_seconds_count", ())] == 5 and m[("llmbatch_shard_seconds_sum", ())] == pytest.approx(10.4)

    def duration(state: str, le: str) -> float:
        return m[("llmbatch_job_duration_seconds_bucket", (("le", le), ("state", state)))]

    assert (duration("partial", "30.0"), duration("partial", "60.0")) == (0, 1)
    assert (duration("failed", "600.0"), duration("failed", "1800.0")) == (0, 1)
    assert m[("llmbatch_job_duration_seconds_sum", (("state", "succeeded"),))] == pytest.approx(1000, abs=1)
    # Cancelled before it started: it has no run to time.
    assert m[("llmbatch_job_duration_seconds_count", (("state", "cancelled"),))] == 0
    labels = {name for key in m for name, _ in key[1]}
    values = " ".join(v for key in m for _, v in key[1])
    assert labels <= {"state", "le", "method", "route", "status"}
    assert not any(x in values for x in (*OWNERS, *ids, "job-"))


def test_replicas_agree_and_sums_only_grow_as_jobs_run_and_end(store):
    token = create_token(store, "prometheus", input_prefixes=[], output_prefixes=[])
    job = add_job(store, 0, "running", {"rows": 4, "error_rows": 0, "completion_tokens": 16})
    first, second = TestClient(create_app(store)), TestClient(create_app(store))
    before = scrape(first, token)
    assert job_figures(before) == job_figures(scrape(second, token))
    store.set_progress(job, "s1", {"rows": 9, "error_rows": 1, "completion_tokens": 30,
                                   **histogram({"1.0": 2, "+Inf": 3}, 2.5)}, event=False)
    running = scrape(second, token)
    store.finish(job, "s1", JobState.SUCCEEDED, message="done",
                 summary={"rows": 12, "error_rows": 1, "completion_tokens": 44})
    ended = scrape(first, token)
    for name in ("llmbatch_job_rows_total", "llmbatch_job_error_rows_total", "llmbatch_job_completion_tokens_total",
                 "llmbatch_shard_seconds_count"):
        assert before[(name, ())] <= running[(name, ())] <= ended[(name, ())], name
    assert (running[("llmbatch_job_rows_total", ())], ended[("llmbatch_job_rows_total", ())]) == (9, 12)
    assert ended[("llmbatch_job_duration_seconds_count", (("state", "succeeded"),))] == 1



def test_jobs_ended_long_ago_are_summed_once_and_every_job_counts_once_as_time_passes(store):
    """FigureCache keeps the sum of jobs that ended over SETTLE_S ago; a scrape reads only the rest."""
    add_job(store, 0, "succeeded", {**histogram({"1.0": 1, "+Inf": 2}, 3.0)}, {"rows": 100}, ran_s=50,
            ended_ago_s=3 * SETTLE_S)
    add_job(store, 1, "partial", None, {"rows": 30, "error_rows": 2}, ran_s=5)
    running = add_job(store, 2, "running", {"rows": 10, **histogram({"1.0": 4, "+Inf": 4}, 2.0)})
    cache = FigureCache(store.engine)

    def check(now=None) -> None:  # the same as summing every job afresh (float sums up to their order)
        cached, fresh = cache.read(now), read_figures(store.engine, true())
        assert cached.totals == fresh.totals
        for a, b in [(cached.shard_seconds, fresh.shard_seconds),
                     *((cached.job_seconds[s], fresh.job_seconds[s]) for s in fresh.job_seconds)]:
            assert (a.buckets, a.count, a.sum) == (b.buckets, b.count, pytest.approx(b.sum))

    check()
    assert cache.read().totals["rows"] == 140
    store.finish(running, "s1", JobState.SUCCEEDED, message="done", summary={"rows": 12})
    check()
    for hours in (1, 2, 30):  # the recent jobs settle into the cached part, each counted once
        check(utcnow() + timedelta(hours=hours))
    later = cache.read(utcnow() + timedelta(hours=30))
    assert (later.totals["rows"], later.totals["error_rows"], later.shard_seconds.count) == (142, 2, 6)
    assert later.job_seconds[JobState.SUCCEEDED].count == 2


def test_a_retry_or_resume_that_starts_its_progress_over_never_lowers_the_sums(store):
    """A new run's progress counts that run's tokens and shard times only; its job's share of the
    sums stays at the most it reported (the `counted` column), and ends at least at its summary."""
    token = create_token(store, "prometheus", input_prefixes=[], output_prefixes=[])
    client = TestClient(create_app(store))
    job, _ = store.submit(NewJob(name="r", owner="alice-tenant", manifest={}, request_hash="r", max_attempts=2))
    job_id = job["id"]
    store.claim(job_id, "s1", lease_s=60)
    store.set_progress(job_id, "s1", {"rows": 10, "error_rows": 1, "completion_tokens": 40,
                                      **histogram({"1.0": 2, "+Inf": 3}, 4.0)}, event=False)
    first = scrape(client, token)
    store.finish(job_id, "s1", JobState.QUEUED, message="retry", error="boom", failed_run=True)
    store.claim(job_id, "s2", lease_s=60)
    seen = [first]
    for progress in ({"rows": 0, "completion_tokens": 0, "phase": "starting", **histogram({"1.0": 0, "+Inf": 0}, 0.0)},
                     {"rows": 8, "error_rows": 0, "completion_tokens": 12, **histogram({"1.0": 1, "+Inf": 1}, 0.5)},
                     {"rows": 20, "error_rows": 2, "completion_tokens": 30, **histogram({"1.0": 3, "+Inf": 4}, 6.0)}):
        store.set_progress(job_id, "s2", progress, event=False)
        seen.append(scrape(client, token))
    store.finish(job_id, "s2", JobState.SUCCEEDED, message="done",
                 summary={"rows": 20, "error_rows": 2, "completion_tokens": 55})
    seen.append(scrape(client, token))
    names = ("llmbatch_job_rows_total", "llmbatch_job_error_rows_total", "llmbatch_job_completion_tokens_total",
             "llmbatch_shard_seconds_count", "llmbatch_shard_seconds_sum")
    for name in names:
        series = [m[(name, ())] for m in seen]
        assert series == sorted(series), (name, series)
    for le in ("1.0", "+Inf"):
        series = [m[("llmbatch_shard_seconds_bucket", (("le", le),))] for m in seen]
        assert series == sorted(series), (le, series)
    assert [seen[-1][(n, ())] for n in names] == [20, 2, 55, 4, 6.0]
    assert seen[2][("llmbatch_job_completion_tokens_total", ())] == 40  # the first run's 40 while the retry has 12
