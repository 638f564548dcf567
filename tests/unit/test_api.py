"""The HTTP API in-process (real app, real store, no scheduler): auth, prefixes, error bodies,
limits, idempotency, cancel, events, reads scoped to the owner, metrics, audit, and a
1,000-submission burst."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from jobs.api.app import create_app
from jobs.lifecycle import JobState
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.service_fixtures import create_pg_database, drop_pg_database, postgres_available


@pytest.fixture
def env(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/jobs.db")
    yield _env(store, tmp_path)
    store.close()


def _env(store, tmp_path):
    alice = create_token(store, "alice", input_prefixes=[str(tmp_path / "data")],
                         output_prefixes=[str(tmp_path / "out")])
    bob = create_token(store, "bob", input_prefixes=["*"], output_prefixes=["s3://team"])
    root = create_token(store, "root", input_prefixes=["*"], output_prefixes=["*"], admin=True)
    client = TestClient(create_app(store, max_body_bytes=64 * 1024))
    return {"store": store, "client": client, "alice": {"Authorization": f"Bearer {alice}"},
            "bob": {"Authorization": f"Bearer {bob}"}, "root": {"Authorization": f"Bearer {root}"},
            "tmp": tmp_path}


def manifest(tmp, **over):
    m = {"name": "sum", "task": "summarize", "input": {"uri": str(tmp / "data" / "in.parquet")},
         "output": {"uri": str(tmp / "out" / "{run_id}")}}
    return {**m, **over}


def test_requests_without_or_with_bad_token_are_refused(env):
    c = env["client"]
    for headers in ({}, {"Authorization": "Bearer llmb_nope"}, {"Authorization": "Basic abc"}):
        r = c.get("/v1/jobs", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["message"]
    r = c.post("/v1/jobs", json={"manifest": manifest(env["tmp"])})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_writing_or_reading_outside_the_token_prefixes_is_forbidden(env):
    c, tmp = env["client"], env["tmp"]
    cases = [
        (manifest(tmp, output={"uri": "/etc/evil"}), ["manifest.output.uri"]),
        (manifest(tmp, output={"uri": str(tmp / "out" / ".." / "elsewhere")}), ["manifest.output.uri"]),
        (manifest(tmp, input={"uri": [str(tmp / "data" / "a"), "s3://other/x"]}), ["manifest.input.uri[1]"]),
    ]
    (tmp / "data").mkdir()
    (tmp / "data" / "link").symlink_to("/etc")  # a link inside the prefix pointing outside it
    cases.append((manifest(tmp, input={"uri": str(tmp / "data" / "link" / "passwd")}), ["manifest.input.uri"]))
    for m, paths in cases:
        r = c.post("/v1/jobs", json={"manifest": m}, headers=env["alice"])
        assert r.status_code == 403, r.text
        assert [f["path"] for f in r.json()["error"]["fields"]] == paths
    r = c.post("/v1/jobs", json={"manifest": manifest(tmp, output={"uri": "s3://team-other/x"})}, headers=env["bob"])
    assert r.status_code == 403  # a prefix matches whole path segments
    assert env["store"].list_jobs() == []
    assert c.post("/v1/jobs", json={"manifest": manifest(tmp)}, headers=env["alice"]).status_code == 201
    ok = c.post("/v1/jobs", json={"manifest": manifest(tmp, output={"uri": "s3://team/nightly/{date}"})},
                headers=env["bob"])
    assert ok.status_code == 201, ok.text


def test_bad_manifest_lists_every_field_path(env):
    m = manifest(env["tmp"], task={"kind": "classify", "labels": ["x"]}, colour="red")
    m["params"] = {"temperature": -1}
    r = env["client"].post("/v1/jobs", json={"manifest": m, "priority": 5000}, headers=env["alice"])
    assert r.status_code == 422
    assert {f["path"] for f in r.json()["error"]["fields"]} == {"priority"}  # envelope first
    r = env["client"].post("/v1/jobs", json={"manifest": m}, headers=env["alice"])
    paths = {f["path"] for f in r.json()["error"]["fields"]}
    assert {"manifest.task.labels", "manifest.colour", "manifest.params.temperature"} <= paths
    r = env["client"].post("/v1/jobs", json={"manifest": manifest(env["tmp"]), "schedule": {"cron": "every day"}},
                           headers=env["alice"])
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == "schedule.cron"


def test_request_size_limit_and_json_errors(env):
    c = env["client"]
    big = {"manifest": manifest(env["tmp"], name="x" * (100 * 1024))}
    r = c.post("/v1/jobs", json=big, headers=env["alice"])
    assert r.status_code == 413 and "larger than" in r.json()["error"]["message"]
    r = c.post("/v1/jobs", content=b"{not json", headers={**env["alice"], "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["message"]
    r = c.get("/v1/jobs/job-unknown", headers=env["alice"])
    assert r.status_code == 404 and r.json() == {"error": {"message": "no job job-unknown", "fields": []}}


def test_idempotency_cancel_events_and_audit(env):
    c, tmp = env["client"], env["tmp"]
    body = {"manifest": manifest(tmp), "idempotency_key": "nightly-1", "priority": 3, "queue": "batch"}
    first = c.post("/v1/jobs", json=body, headers=env["alice"])
    again = c.post("/v1/jobs", json=body, headers=env["alice"])
    assert (first.status_code, again.status_code) == (201, 200)
    job = first.json()["job"]
    assert again.json()["job"]["id"] == job["id"] and job["manifest"]["output"]["uri"].endswith(job["id"])
    clash = c.post("/v1/jobs", json={**body, "priority": 4}, headers=env["alice"])
    assert clash.status_code == 409 and clash.json()["error"]["fields"][0]["path"] == "idempotency_key"

    assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=env["bob"]).status_code == 404  # not bob's: unseen
    r = c.post(f"/v1/jobs/{job['id']}/cancel", headers=env["alice"])
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    assert c.post(f"/v1/jobs/{job['id']}/cancel", headers=env["alice"]).status_code == 409
    ev = c.get(f"/v1/jobs/{job['id']}/events", headers=env["alice"]).json()
    assert [e["state"] for e in ev["events"]] == ["queued", "cancelling", "cancelled"]
    listed = c.get("/v1/jobs", params={"state": "cancelled", "queue": "batch"}, headers=env["root"]).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    actions = [(a["actor"], a["action"], a["detail"].get("outcome")) for a in env["store"].audit_lines(10)]
    assert ("alice", "submit", "created") in actions and ("alice", "submit", "existing") in actions
    assert ("bob", "cancel", "forbidden") in actions and sum(a[1] == "cancel" for a in actions) == 3


def test_job_states_are_an_enum_in_the_openapi_schema(env):
    assert env["client"].get("/openapi.json").status_code == 404  # docs are off unless `serve --docs`
    spec = env["client"].app.openapi()
    states = [s.value for s in JobState]
    assert spec["components"]["schemas"]["JobState"]["enum"] == states
    ref = {"$ref": "#/components/schemas/JobState"}
    assert spec["components"]["schemas"]["JobOut"]["properties"]["state"] == ref
    listing = next(p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "state")
    assert ref in listing["schema"]["anyOf"]
    r = env["client"].get("/v1/jobs", params={"state": "partial-ish"}, headers=env["alice"])
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["path"] == "query.state"


def test_metrics_healthz_and_status_page(env):
    c = env["client"]
    c.post("/v1/jobs", json={"manifest": manifest(env["tmp"])}, headers=env["alice"])
    assert c.get("/healthz").json()["ok"] is True
    assert c.get("/metrics").status_code == 401
    text = c.get("/metrics", headers=env["bob"]).text
    assert 'llmbatch_jobs{state="queued"} 1.0' in text
    assert 'llmbatch_http_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in text
    page = c.get("/", headers=env["root"])
    assert page.status_code == 200 and "llmbatch: all jobs" in page.text and "queued: <b>1</b>" in page.text


def test_a_partial_job_shows_its_reasons_counts_and_exit_code(env):
    store, c, alice = env["store"], env["client"], env["alice"]
    job_id = c.post("/v1/jobs", json={"manifest": manifest(env["tmp"])}, headers=alice).json()["job"]["id"]
    store.claim(job_id, "s1", lease_s=60)
    store.set_progress(job_id, "s1", {"shards_total": 4, "shards_done": 2, "rows_total": 40, "rows": 20,
                                      "error_rows": 2, "completion_tokens": 80, "eta_s": 125.04}, event=True)
    running = c.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert (running["rows"], running["rows_total"], running["error_rows"], running["completion_tokens"]) == (20, 40, 2, 80)
    assert (running["eta_s"], running["exit_code"], running["reasons"]) == (125.0, None, [])
    page = c.get("/", headers=alice).text
    assert "20 / 40" in page and "2m05s" in page and "(2 errors)" in page
    reasons = ["1 of 4 shards skipped", "error rows 3/40 = 7.5% above max_error_rate 0.0%"]
    store.finish(job_id, "s1", JobState.PARTIAL, message="partial", error="; ".join(reasons),
                 summary={"rows": 30, "rows_total": 40, "error_rows": 3, "completion_tokens": 120, "reasons": reasons})
    done = c.get(f"/v1/jobs/{job_id}", headers=alice).json()
    assert (done["state"], done["reasons"], done["exit_code"], done["eta_s"]) == ("partial", reasons, 3, None)
    assert (done["rows"], done["rows_total"], done["error_rows"], done["completion_tokens"]) == (30, 40, 3, 120)
    listed = c.get("/v1/jobs", params={"state": "partial"}, headers=alice).json()["jobs"]
    assert [(j["id"], j["reasons"], j["manifest"]) for j in listed] == [(job_id, reasons, None)]
    page = c.get("/", headers=alice).text
    assert "class='state partial'" in page and "partial: <b>1</b>" in page and "error rows 3/40" in page
    assert "30 / 40" in page


def test_reads_are_scoped_to_the_owner_and_an_admin_sees_all(env):
    c, tmp = env["client"], env["tmp"]
    mine = c.post("/v1/jobs", json={"manifest": manifest(tmp, name="a-secret-name")}, headers=env["alice"]).json()
    theirs = c.post("/v1/jobs", json={"manifest": manifest(tmp, name="b-job", output={"uri": "s3://team/x"})},
                    headers=env["bob"]).json()
    a, b = mine["job"]["id"], theirs["job"]["id"]
    ids = [j["id"] for j in c.get("/v1/jobs", headers=env["alice"]).json()["jobs"]]
    assert ids == [a]
    r = c.get("/v1/jobs", params={"owner": "bob"}, headers=env["alice"])
    assert r.status_code == 403 and r.json()["error"]["fields"][0]["path"] == "query.owner"
    assert [j["id"] for j in c.get("/v1/jobs", params={"owner": "alice"}, headers=env["alice"]).json()["jobs"]] == [a]
    assert {j["id"] for j in c.get("/v1/jobs", headers=env["root"]).json()["jobs"]} == {a, b}
    assert [j["id"] for j in c.get("/v1/jobs", params={"owner": "bob"}, headers=env["root"]).json()["jobs"]] == [b]
    for path in (f"/v1/jobs/{b}", f"/v1/jobs/{b}/events"):  # another tenant's job is like no job at all
        r = c.get(path, headers=env["alice"])
        assert r.status_code == 404 and r.json()["error"]["message"] == f"no job {b}"
        assert c.get(path, headers=env["root"]).status_code == 200 and c.get(path, headers=env["bob"]).status_code == 200
    assert c.post(f"/v1/jobs/{b}/cancel", headers=env["alice"]).status_code == 404
    page = c.get("/", headers=env["alice"]).text
    assert a in page and b not in page and "llmbatch: jobs of alice" in page and "queued: <b>1</b>" in page
    everyone = c.get("/", headers=env["root"]).text
    assert a in everyone and b in everyone and "queued: <b>2</b>" in everyone
    anonymous = c.get("/").text  # no token: counts over all jobs, nothing that names a tenant or a job
    assert "queued: <b>2</b>" in anonymous and "send a token" in anonymous
    assert not any(x in anonymous for x in (a, b, "alice", "bob", "a-secret-name", str(tmp)))
    assert c.get("/", headers={"Authorization": "Bearer llmb_wrong"}).status_code == 401


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_burst_of_1000_submissions_from_threads(backend, tmp_path):
    if backend == "postgres":
        if not postgres_available():
            pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
        name, url = create_pg_database()
    else:
        name, url = None, f"sqlite:///{tmp_path}/jobs.db"
    store = Store(url)
    try:
        env = _env(store, tmp_path)
        results: dict[str, str] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def worker(k: int):
            with TestClient(create_app(store)) as c:  # one client per thread, like separate users
                for i in range(k, 1000, 8):
                    for _ in range(1 if i % 5 else 2):  # every 5th is sent twice (a client retry)
                        r = c.post("/v1/jobs", json={"manifest": manifest(tmp_path, name=f"b{i}"),
                                                     "idempotency_key": f"burst-{i}"}, headers=env["alice"])
                        with lock:
                            if r.status_code not in (200, 201):
                                failures.append(r.text)
                            elif results.setdefault(f"burst-{i}", r.json()["job"]["id"]) != r.json()["job"]["id"]:
                                failures.append(f"burst-{i} got two ids")

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        jobs = store.list_jobs(limit=5000)
        assert len(jobs) == 1000 and len(results) == 1000
        assert {j["idempotency_key"]: j["id"] for j in jobs} == results
    finally:
        store.close()
        if name:
            drop_pg_database(name)
