"""The service end to end: a real Ray cluster that outlives it, uvicorn in a subprocess, real
HTTP, the CLI. Jobs use echo_run_job (tests/support/service_fixtures.py), a small resumable runner."""

from __future__ import annotations

import os
import time

import pytest

from jobs.cli.client import Client
from tests.support.service_fixtures import (
    Service,
    echo_manifest,
    output_ids,
    run_cli,
    runs,
    write_inputs,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]


def start(services, *args, **kw) -> Service:
    svc = Service(*args, **kw)
    services.append(svc)
    return svc


def test_cli_submit_wait_status_list_logs(ray_cluster, db, token, tmp_path, services):
    svc = start(services, db, ray_cluster.address)
    ids = write_inputs(tmp_path / "in", files=3)
    manifest = tmp_path / "job.yaml"
    import yaml

    manifest.write_text(yaml.safe_dump(echo_manifest("cli-job", tmp_path / "in", str(tmp_path / "out" / "{run_id}"))))
    env = {"LLMBATCH_TOKEN": token}
    sub = run_cli("submit", str(manifest), "--server", svc.url, "--priority", "2", env=env)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.split()[-1]
    waited = run_cli("wait", job_id, "--server", svc.url, env=env)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert waited.stdout.split()[-1] == "succeeded"
    status = run_cli("status", job_id, "--server", svc.url, env=env)
    assert "succeeded" in status.stdout and "cli-job" in status.stdout
    assert job_id in run_cli("list", "--server", svc.url, env=env).stdout
    logs = run_cli("logs", "-f", job_id, "--server", svc.url, env=env)
    assert "[running] attempt 1 started" in logs.stdout and "3/3 shards" in logs.stdout
    assert sorted(output_ids(tmp_path / "out" / job_id)) == sorted(ids)
    no_token = run_cli("status", job_id, "--server", svc.url, env={"LLMBATCH_TOKEN": ""})
    assert no_token.returncode == 1 and "HTTP 401" in no_token.stderr


def _submit_then_kill_service(name, files, ray_cluster, db, token, tmp_path, services):
    """Submit a slow echo job, let it commit two shards, then kill -9 the service; (ids, job id)."""
    ids = write_inputs(tmp_path / "in", files=files)
    svc = start(services, db, ray_cluster.address, lease_s=600)
    c = Client(svc.url, token)
    job_id = c.submit(echo_manifest(name, tmp_path / "in", str(tmp_path / "out"), shard_delay_s=0.8))["job"]["id"]
    wait_for(lambda: (c.get(job_id).get("progress") or {}).get("shards_done", 0) >= 2)
    svc.kill9()
    return ids, job_id


def test_kill9_mid_job_then_restart_reattaches(ray_cluster, db, token, tmp_path, services):
    ids, job_id = _submit_then_kill_service("k9", 8, ray_cluster, db, token, tmp_path, services)
    time.sleep(2.0)  # the runner keeps committing shards while no service watches it
    # A long lease: the new process must see that its predecessor on this host is dead and
    # adopt the job at once, not wait the lease out.
    svc2 = start(services, db, ray_cluster.address, lease_s=600)
    job = Client(svc2.url, token).wait(job_id, timeout_s=120)
    assert job["state"] == "succeeded", job
    out_ids = output_ids(tmp_path / "out")
    assert sorted(out_ids) == sorted(ids) and len(out_ids) == len(set(out_ids))  # each id exactly once
    assert len(runs(tmp_path / "out")) == 1  # re-attached: the job was not started again
    events = [e["message"] for e in Client(svc2.url, token).events(job_id)["events"]]
    assert any("re-attached" in (m or "") for m in events)


def test_runner_lost_while_service_down_is_requeued_and_resumes(ray_cluster, db, token, tmp_path, services):
    ids, job_id = _submit_then_kill_service("lost", 6, ray_cluster, db, token, tmp_path, services)
    os.kill(runs(tmp_path / "out")[0]["pid"], 9)  # the runner's worker process dies too
    svc2 = start(services, db, ray_cluster.address, lease_s=600)
    job = Client(svc2.url, token).wait(job_id, timeout_s=120)
    assert job["state"] == "succeeded", job
    out_ids = output_ids(tmp_path / "out")
    assert sorted(out_ids) == sorted(ids) and len(out_ids) == len(set(out_ids))
    modes = [r["mode"] for r in runs(tmp_path / "out")]
    assert modes == ["error_if_exists", "resume"]  # started again once, from committed shards
    assert job["attempts"] == 2 and job["failures"] == 0


def test_cancel_running_job_stops_its_runner(ray_cluster, db, token, tmp_path, services):
    write_inputs(tmp_path / "in", files=10)
    svc = start(services, db, ray_cluster.address)
    c = Client(svc.url, token)
    job_id = c.submit(echo_manifest("cx", tmp_path / "in", str(tmp_path / "out"), shard_delay_s=0.6))["job"]["id"]
    wait_for(lambda: (c.get(job_id).get("progress") or {}).get("shards_done", 0) >= 1)
    assert c.cancel(job_id)["state"] == "cancelling"
    job = c.wait(job_id, timeout_s=60)
    assert job["state"] == "cancelled"
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    time.sleep(1.5)
    assert sorted((tmp_path / "out").glob("part-*.parquet")) == parts  # nothing runs any more
    assert 1 <= len(parts) < 10
    out_ids = output_ids(tmp_path / "out")  # every committed part is whole and readable
    assert len(out_ids) == 5 * len(parts) == len(set(out_ids))
    states = [e["state"] for e in c.events(job_id)["events"] if e["kind"] == "state"]
    assert states == ["queued", "running", "cancelling", "cancelled"]


def test_failed_runs_are_retried_with_backoff_then_give_up(ray_cluster, db, token, tmp_path, services):
    ids = write_inputs(tmp_path / "in", files=3)
    svc = start(services, db, ray_cluster.address)
    c = Client(svc.url, token)
    ok = c.submit(echo_manifest("retry", tmp_path / "in", str(tmp_path / "ok"), fail_runs=2),
                  max_attempts=3, retry_backoff_s=0.5)["job"]["id"]
    bad = c.submit(echo_manifest("hopeless", tmp_path / "in", str(tmp_path / "bad"), fail_runs=9),
                   max_attempts=2, retry_backoff_s=0.2)["job"]["id"]
    job = c.wait(ok, timeout_s=90)
    assert (job["state"], job["attempts"], job["failures"]) == ("succeeded", 3, 2)
    assert sorted(output_ids(tmp_path / "ok")) == sorted(ids)
    assert [r["mode"] for r in runs(tmp_path / "ok")] == ["error_if_exists", "resume", "resume"]
    retries = [e for e in c.events(ok)["events"] if e["kind"] == "retry"]
    assert [e["message"] for e in retries] == ["run failed; retry in 0s", "run failed; retry in 1s"]
    gave_up = c.wait(bad, timeout_s=90)
    assert (gave_up["state"], gave_up["failures"]) == ("failed", 2) and "planned failure" in gave_up["error"]


def test_timeout_fails_the_job(ray_cluster, db, token, tmp_path, services):
    write_inputs(tmp_path / "in", files=20)
    svc = start(services, db, ray_cluster.address)
    c = Client(svc.url, token)
    job_id = c.submit(echo_manifest("slow", tmp_path / "in", str(tmp_path / "out"), shard_delay_s=0.5),
                      timeout_s=2, max_attempts=3)["job"]["id"]
    job = c.wait(job_id, timeout_s=60)
    assert job["state"] == "failed" and job["error"] == "timed out after 2.0s" and job["attempts"] == 1


def test_priority_queue_limit_and_resource_admission(ray_cluster, db, token, tmp_path, services):
    write_inputs(tmp_path / "in", files=2)
    svc = start(services, db, ray_cluster.address, extra=["--queue-limit", "one=1"])
    c = Client(svc.url, token)
    huge = c.submit({**echo_manifest("huge", tmp_path / "in", str(tmp_path / "huge")),
                     "resources": {"workers": 3, "cpus_per_worker": 1}})["job"]["id"]  # 3 CPUs > 2
    first = c.submit(echo_manifest("first", tmp_path / "in", str(tmp_path / "a"), shard_delay_s=1.5),
                     queue="one")["job"]["id"]
    wait_for(lambda: c.get(first)["state"] == "running")
    low = c.submit(echo_manifest("low", tmp_path / "in", str(tmp_path / "b")), queue="one")["job"]["id"]
    high = c.submit(echo_manifest("high", tmp_path / "in", str(tmp_path / "c")), queue="one", priority=10)["job"]["id"]
    time.sleep(1.0)
    assert c.get(low)["state"] == "queued" and c.get(high)["state"] == "queued"  # queue "one" is full
    done = {j: c.wait(j, timeout_s=90) for j in (first, low, high)}
    assert all(j["state"] == "succeeded" for j in done.values())
    assert done[first]["finished_at"] <= done[high]["started_at"] <= done[low]["started_at"]
    assert c.get(huge)["state"] == "queued"  # never fits this cluster: waits, is not started
    assert "waiting: needs 3 CPUs" in c.events(huge)["events"][-1]["message"]
    c.cancel(huge)
