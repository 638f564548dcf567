"""The job store on real SQLite and real PostgreSQL: migrations, idempotency, the conditional
updates that keep two schedulers from starting one job twice, cancel, events, audit."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from jobs.lifecycle import IllegalTransition, JobState
from jobs.service.auth import authenticate, hash_token
from jobs.service.store.job_store import IdempotencyConflict, NewJob, Store, make_engine, migrate, utcnow
from jobs.service.store.tables import jobs
from jobs.service.tokens import list_tokens


@pytest.fixture
def store_url(db_as_written):
    """Each store test runs on SQLite and on PostgreSQL, with the URL as a user writes it."""
    return db_as_written


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()


def job(key=None, **kw) -> NewJob:
    return NewJob(name="j", owner=kw.pop("owner", "alice"), manifest={"name": "j"}, request_hash=kw.pop("h", "h1"),
                  idempotency_key=key, **kw)


def test_migrations_create_schema_and_rerun_is_a_no_op(store_url):
    Store(store_url).close()
    s = Store(store_url)  # second start: alembic finds the schema at head
    names = set(sa.inspect(s.engine).get_table_names())
    assert {"jobs", "job_events", "schedules", "tokens", "audit_log", "alembic_version"} <= names
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("select version_num from alembic_version").scalar() == "0003"


def test_upgrade_from_0001_keeps_tokens_and_adds_their_lifecycle(store_url):
    engine = make_engine(store_url)
    migrate(engine, "0001")
    with engine.begin() as conn:  # a token as 0001 stored it
        conn.execute(sa.text("insert into tokens (id, name, token_hash, input_prefixes, output_prefixes, admin, "
                             "created_at) values ('t1', 'old', :h, '[\"*\"]', '[\"*\"]', false, :now)"),
                     {"h": hash_token("llmb_old-secret"), "now": utcnow().replace(tzinfo=None)})
    engine.dispose()
    s = Store(store_url)  # migrates 0001 -> head
    try:
        columns = {c["name"] for c in sa.inspect(s.engine).get_columns("tokens")}
        assert {"expires_at", "last_used_at", "revoked_at"} <= columns
        assert authenticate(s, "llmb_old-secret").name == "old"  # still valid, now never-expiring
        assert [t["name"] for t in list_tokens(s) if t["last_used_at"] is not None] == ["old"]
    finally:
        s.close()


def test_upgrade_from_0002_keeps_jobs_and_adds_their_counted_figures(store_url):
    engine = make_engine(store_url)
    migrate(engine, "0002")
    with engine.begin() as conn:  # an ended job as 0002 stored it
        conn.execute(sa.text("insert into jobs (id, name, owner, state, queue, priority, request_hash, manifest, cpus, "
                             "gpus, max_attempts, attempts, failures, retry_backoff_s, created_at, summary) values "
                             "('job-old', 'n', 'alice', 'succeeded', 'default', 0, 'h', '{}', 1, 0, 1, 1, 0, 10, :now, "
                             "'{\"rows\": 7}')"), {"now": utcnow().replace(tzinfo=None)})
    engine.dispose()
    s = Store(store_url)  # migrates 0002 -> head
    try:
        assert "counted" in {c["name"] for c in sa.inspect(s.engine).get_columns("jobs")}
        old = s.get("job-old")
        assert (old["state"], old["summary"], old["counted"]) == ("succeeded", {"rows": 7}, None)
    finally:
        s.close()


@pytest.mark.timeout(120)  # without the migration lock, PostgreSQL deadlocks here
def test_services_starting_together_migrate_once(store_url):
    errors: list[BaseException] = []

    def start():
        try:
            Store(store_url).close()
        except BaseException as exc:  # noqa: BLE001 - the test reports any failure
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_idempotent_submit_returns_the_first_job(store):
    first, created = store.submit(job("k1"))
    again, created_again = store.submit(job("k1"))
    assert created and not created_again and again["id"] == first["id"]
    other_owner, created_other = store.submit(job("k1", owner="bob"))  # keys are per owner
    assert created_other and other_owner["id"] != first["id"]
    with pytest.raises(IdempotencyConflict):
        store.submit(job("k1", h="different request"))
    assert len(store.list_jobs()) == 2


def test_concurrent_claims_have_exactly_one_winner(store_url):
    # Two Store objects = two service processes, each with its own connection pool.
    a, b = Store(store_url), Store(store_url, run_migrations=False)
    ids = [a.submit(job())[0]["id"] for _ in range(20)]
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()

    def claimer(s: Store, name: str):
        for job_id in ids:
            if s.claim(job_id, name, lease_s=30):
                with lock:
                    wins.append((job_id, name))

    threads = [threading.Thread(target=claimer, args=(s, f"sched-{i}")) for i, s in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(j for j, _ in wins) == sorted(ids)  # each job claimed once, none lost
    assert all(a.get(j)["attempts"] == 1 for j in ids)


def test_lease_take_over_only_after_expiry(store):
    j = store.submit(job())[0]
    assert store.claim(j["id"], "s1", lease_s=30)
    assert store.take_over(j["id"], "s2", lease_s=30) is None  # s1 is alive
    with store.engine.begin() as conn:  # s1 goes silent: its lease runs out
        conn.execute(sa.text("update jobs set lease_until = :t where id = :i"),
                     {"t": (utcnow() - timedelta(seconds=5)).replace(tzinfo=None), "i": j["id"]})
    assert [o["id"] for o in store.orphans()] == [j["id"]]
    assert store.renew_leases("s2", 30, {j["id"]}) == set()  # not its job
    assert store.take_over(j["id"], "s2", lease_s=30)["lease_owner"] == "s2"
    assert not store.finish(j["id"], "s1", "succeeded", message="late")  # s1 lost its say
    assert store.finish(j["id"], "s2", "succeeded", message="done")
    assert store.get(j["id"])["state"] == "succeeded"


def test_cancel_queued_and_running(store):
    q = store.submit(job())[0]
    r = store.submit(job())[0]
    store.claim(r["id"], "s1", lease_s=30)
    assert store.request_cancel(q["id"]) == "cancelled"
    assert store.request_cancel(r["id"]) == "cancelling"
    assert store.request_cancel("job-missing") is None
    assert [e["state"] for e in store.events(q["id"])] == ["queued", "cancelling", "cancelled"]
    assert store.claim(q["id"], "s1", lease_s=30) is None  # a cancelled job never starts


def test_retry_requeue_counts_failures_and_backoff_hides_the_job(store):
    j = store.submit(job(max_attempts=3))[0]
    store.claim(j["id"], "s1", lease_s=30)
    assert store.finish(j["id"], "s1", "queued", message="retry", error="boom", failed_run=True,
                        not_before=utcnow() + timedelta(hours=1), event_kind="retry")
    row = store.get(j["id"])
    assert (row["state"], row["failures"], row["attempts"]) == ("queued", 1, 1)
    assert store.queued_ready() == []  # still in backoff


def test_priority_then_age_order(store):
    low = store.submit(job(priority=0))[0]
    high = store.submit(job(priority=5))[0]
    low2 = store.submit(job(priority=0))[0]
    assert [j["id"] for j in store.queued_ready()] == [high["id"], low["id"], low2["id"]]


def test_events_progress_and_audit(store):
    j = store.submit(job())[0]
    store.claim(j["id"], "s1", lease_s=30)
    store.set_progress(j["id"], "s1", {"shards_total": 4, "shards_done": 1}, event=True)
    evs = store.events(j["id"])
    assert [e["kind"] for e in evs] == ["state", "state", "progress"]
    assert evs[-1]["message"] == "1/4 shards" and evs[-1]["data"]["shards_done"] == 1
    assert store.events(j["id"], after=evs[0]["seq"])[0]["seq"] == evs[1]["seq"]
    store.audit("alice", "submit", j["id"], {"outcome": "created"})
    assert store.audit_lines(1)[0]["action"] == "submit"
    assert store.count_by_state() == {"running": 1}


def test_an_illegal_move_raises_and_changes_nothing(store):
    j = store.submit(job(max_attempts=3))[0]
    store.claim(j["id"], "s1", lease_s=30)
    assert store.request_cancel(j["id"]) == JobState.CANCELLING
    before, events = store.get(j["id"]), store.events(j["id"])
    with pytest.raises(IllegalTransition):  # a cancelling job is never re-queued for a retry
        store.finish(j["id"], "s1", JobState.QUEUED, message="retry", error="boom", failed_run=True)
    with pytest.raises(IllegalTransition):  # and finish never starts a job
        store.finish(j["id"], "s1", JobState.RUNNING, message="again")
    assert store.get(j["id"]) == before and store.events(j["id"]) == events
    assert isinstance(before["state"], JobState) and before["state"] is JobState.CANCELLING
    assert store.finish(j["id"], "s1", JobState.CANCELLED, message="cancelled")
    assert store.get(j["id"])["state"] is JobState.CANCELLED
    assert not store.finish(j["id"], "s1", JobState.FAILED, message="late")  # no longer held: not its say
    with pytest.raises(sa.exc.StatementError, match="not a valid JobState"), store.engine.begin() as conn:
        conn.execute(sa.update(jobs).where(jobs.c.id == j["id"]).values(state="partial-ish"))
    assert store.get(j["id"])["state"] is JobState.CANCELLED


def test_partial_is_terminal_keeps_its_summary_and_its_event_says_why(store):
    j = store.submit(job(max_attempts=3))[0]
    store.claim(j["id"], "s1", lease_s=30)
    summary = {"rows": 30, "error_rows": 3, "reasons": ["1 of 4 shards skipped", "error rate 10% above 0%"]}
    assert store.finish(j["id"], "s1", JobState.PARTIAL, message="partial: 1 of 4 shards skipped",
                        error="1 of 4 shards skipped; error rate 10% above 0%", summary=summary, output_uri="s3://o/")
    row = store.get(j["id"])
    assert (row["state"], row["summary"], row["failures"], row["output_uri"]) == ("partial", summary, 0, "s3://o/")
    assert row["finished_at"] is not None and row["lease_owner"] is None
    assert [(e["kind"], e["state"]) for e in store.events(j["id"])][-1] == ("state", "partial")  # no error event
    assert store.count_by_state() == {"partial": 1}
    assert [r["id"] for r in store.list_jobs(state=JobState.PARTIAL)] == [j["id"]]
    assert store.request_cancel(j["id"]) is JobState.PARTIAL  # ended: a cancel changes nothing
    assert store.claim(j["id"], "s1", lease_s=30) is None  # and it never runs again
