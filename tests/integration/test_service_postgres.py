"""Two service processes on one PostgreSQL database share the queue without starting any job
twice; schedules missed while the service was down run once on start (or are skipped)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs.service import cron as schedules
from jobs.service.auth import create_token
from jobs.cli.client import Client
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import schedules as schedules_table
from tests.support.service_fixtures import (
    Service,
    echo_manifest,
    output_ids,
    runs,
    write_inputs,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_two_services_never_start_a_job_twice(ray_cluster, pg_url, tmp_path, services):
    store = Store(pg_url)
    token = create_token(store, "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
    write_inputs(tmp_path / "in", files=2, rows_per_file=3)
    a = Service(pg_url, ray_cluster.address)
    services.append(a)
    b = Service(pg_url, ray_cluster.address)
    services.append(b)
    ca, cb = Client(a.url, token), Client(b.url, token)
    ids = []
    for i in range(12):  # submitted through both, picked up by whichever claims first
        c = ca if i % 2 else cb
        ids.append(c.submit(echo_manifest(f"j{i}", tmp_path / "in", str(tmp_path / "out" / f"{i}")))["job"]["id"])
    jobs = [ca.wait(j, timeout_s=180) for j in ids]
    assert [j["state"] for j in jobs] == ["succeeded"] * 12
    assert all(j["attempts"] == 1 for j in jobs)
    for i in range(12):
        assert len(runs(tmp_path / "out" / f"{i}")) == 1  # one runner per job, ever
        assert len(output_ids(tmp_path / "out" / f"{i}")) == 6
    starters = {e["data"]["scheduler"] for j in ids for e in ca.events(j)["events"] if e["state"] == "running"}
    assert len(starters) == 2, "both processes should have started some of the jobs"
    store.close()


def test_missed_schedule_runs_once_on_start_and_skip_is_skipped(ray_cluster, pg_url, tmp_path, services):
    store = Store(pg_url)
    token = create_token(store, "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
    write_inputs(tmp_path / "in", files=1)
    made = {}
    for choice in ("run_once", "skip"):
        m = echo_manifest(f"nightly-{choice}", tmp_path / "in", str(tmp_path / choice / "{date}" / "{run_id}"))
        sch, _ = schedules.create(store, name=m["name"], owner="alice", cron="0 2 * * *", on_missed=choice,
                                  request={"manifest": m})
        with store.engine.begin() as conn:  # the service was down for the last three nights
            conn.execute(update(schedules_table).where(schedules_table.c.id == sch["id"])
                         .values(next_run_at=utcnow() - timedelta(days=3)))
        made[choice] = sch["id"]
    svc = Service(pg_url, ray_cluster.address)
    services.append(svc)
    c = Client(svc.url, token)
    deadline = time.monotonic() + 60
    while not c.list(schedule_id=made["run_once"]) and time.monotonic() < deadline:
        time.sleep(0.3)
    [run] = c.list(schedule_id=made["run_once"])
    job = c.wait(run["id"], timeout_s=90)
    assert job["state"] == "succeeded"
    expected_date = run["scheduled_for"][:10]
    assert job["output_uri"].endswith(f"/run_once/{expected_date}/{run['id']}")
    time.sleep(2)  # a few more ticks: still one run, and none for the skipping schedule
    assert len(c.list(schedule_id=made["run_once"])) == 1
    assert c.list(schedule_id=made["skip"]) == []
    nxt = {s["id"]: s["next_run_at"] for s in schedules.list_all(store)}
    assert all(v > utcnow() for v in nxt.values())
    store.close()
