"""Outcomes and progress through the service end to end: a real Ray cluster, the service in a
subprocess, real HTTP, the real CLI. The runner (tests/support/outcome_runner.py) ends each job
the way its manifest asks; what is tested is what the scheduler, store, API, CLI and /metrics
make of it: the `partial` state with its reasons and counts, never retried; `wait`'s exit code
per outcome; live rows done/total and ETA; the figures Prometheus scrapes."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.cli.client import Client
from tests.support.outcome_runner import REASONS, outcome_manifest, summary_of
from tests.support.paths import REPO
from tests.support.service_fixtures import Service, cli_command, run_cli, write_inputs
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]
RUNNER = "tests.support.outcome_runner:outcome_run_job"


def _submit(c: Client, tmp_path, outcome: str, **opts) -> str:
    manifest = outcome_manifest(f"job-{outcome}", tmp_path / "in", str(tmp_path / "out" / outcome), outcome)
    return c.submit(manifest, **opts)["job"]["id"]


def _serve(ray_cluster, db: str, token: str, tmp_path, services: list) -> tuple[Service, Client]:
    """One input file, a service with the outcome runner (stopped when the test ends), a client."""
    write_inputs(tmp_path / "in", files=1)
    svc = Service(db, ray_cluster.address, runner=RUNNER)
    services.append(svc)
    return svc, Client(svc.url, token)


def _scrape(url: str, token: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_partial_is_an_outcome_with_reasons_and_each_outcome_has_its_exit_code(ray_cluster, db, token, tmp_path,
                                                                             services):
    svc, c = _serve(ray_cluster, db, token, tmp_path, services)
    env = {"LLMBATCH_TOKEN": token}
    partial = _submit(c, tmp_path, "partial", max_attempts=3, retry_backoff_s=0.1)
    ok = _submit(c, tmp_path, "succeeded")
    bad = _submit(c, tmp_path, "failed")
    codes = {job_id: run_cli("wait", job_id, "--server", svc.url, env=env) for job_id in (partial, ok, bad)}
    assert {j: r.returncode for j, r in codes.items()} == {partial: 3, ok: 0, bad: 1}, [r.stderr for r in codes.values()]
    assert codes[partial].stdout.split()[-1] == "partial"
    assert "15/20 rows, 3 errors" in codes[partial].stdout and "partial: error rows 3/20" in codes[partial].stdout

    job = c.get(partial)
    # Ended partial on its first run, not retried although it had attempts left.
    assert (job["state"], job["attempts"], job["failures"], job["exit_code"]) == ("partial", 1, 0, 3)
    assert job["reasons"][1] == REASONS[1]
    assert "engine died" in job["reasons"][0] and "10.1.2.3" not in job["reasons"][0]  # cleaned like errors
    assert (job["rows"], job["rows_total"], job["error_rows"]) == (15, 20, 3)
    assert job["summary"]["shards_skipped"] == 1 and job["eta_s"] is None
    events = c.events(partial)["events"]
    assert [e["state"] for e in events if e["kind"] == "state"] == ["queued", "running", "partial"]
    assert not [e for e in events if e["kind"] in ("retry", "error")]
    assert events[-1]["message"].startswith("partial: 1 of 4 shards skipped")

    status = run_cli("status", partial, "--server", svc.url, env=env).stdout
    assert "partial" in status and "15/20 rows, 3 errors" in status and "- error rows 3/20" in status
    listed = run_cli("list", "--state", "partial", "--server", svc.url, env=env).stdout
    assert partial in listed and ok not in listed and "15/20" in listed

    m = _scrape(svc.url, token)
    assert m[("llmbatch_jobs", (("state", "partial"),))] == 1 and m[("llmbatch_queue_depth", ())] == 0
    expected = summary_of("partial")["rows"] + summary_of("succeeded")["rows"] + 20  # the failed run's progress
    assert m[("llmbatch_job_rows_total", ())] == expected
    assert m[("llmbatch_job_error_rows_total", ())] == 3 * 3  # each run reported 3; the failed one published none
    assert m[("llmbatch_job_failed_runs_total", ())] == 1
    assert m[("llmbatch_shard_seconds_count", ())] == 3 + 4 + 4
    assert m[("llmbatch_shard_seconds_bucket", (("le", "0.5"),))] == 11
    for state in ("partial", "succeeded", "failed"):
        assert m[("llmbatch_job_duration_seconds_count", (("state", state),))] == 1
        assert m[("llmbatch_job_duration_seconds_bucket", (("le", "+Inf"), ("state", state)))] == 1


def test_a_running_job_shows_rows_and_eta_and_wait_exits_130_when_it_is_cancelled(ray_cluster, db, token, tmp_path,
                                                                                 services):
    svc, c = _serve(ray_cluster, db, token, tmp_path, services)
    job_id = _submit(c, tmp_path, "hold")
    waiting = subprocess.Popen(cli_command("wait", job_id, "--server", svc.url), cwd=REPO, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), "LLMBATCH_TOKEN": token},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    job = wait_for(lambda: (j := c.get(job_id))["rows"] == 15 and j)
    assert (job["state"], job["rows_total"], job["error_rows"], job["exit_code"]) == ("running", 20, 3, None)
    assert job["eta_s"] == pytest.approx(60.3) and job["progress"]["rows_per_s"] == 16.7
    page = httpx.get(svc.url + "/", headers={"Authorization": f"Bearer {token}"}, timeout=30).text
    assert "15 / 20" in page and "1m00s" in page
    m = _scrape(svc.url, token)
    assert m[("llmbatch_job_rows_total", ())] == 15 and m[("llmbatch_job_completion_tokens_total", ())] == 60
    c.cancel(job_id)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 130, out + err
    assert out.split()[-1] == "cancelled"
    assert "15/20 rows, 3 errors" in err  # the plain progress lines without a terminal (the last one at least)
