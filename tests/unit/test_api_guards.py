"""What every caller meets before a route: the failed-authentication limit per client address
(1,000 bad tokens meet it; other addresses do not notice) and the security headers on every
answer, errors included, HSTS only over TLS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from jobs.api.app import create_app
from jobs.api.auth_limit import FailureLimiter
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store


@pytest.fixture
def env(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/jobs.db")
    good = create_token(store, "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
    app = create_app(store, max_body_bytes=4096)
    yield {"app": app, "good": {"Authorization": f"Bearer {good}"}, "tmp": tmp_path}
    store.close()


def test_limiter_window_with_a_clock():
    now = [0.0]
    lim = FailureLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert lim.retry_after("a") is None
        lim.failed("a")
    assert lim.retry_after("a") == 60 and lim.retry_after("b") is None
    now[0] = 45.0
    assert lim.retry_after("a") == 15
    now[0] = 60.0
    assert lim.retry_after("a") is None  # the oldest failure left the window


def test_a_thousand_bad_tokens_meet_the_limit(env):
    attacker = TestClient(env["app"], client=("203.0.113.7", 40000))
    other = TestClient(env["app"], client=("198.51.100.2", 40001))
    codes = []
    for i in range(1000):
        r = attacker.get("/v1/jobs", headers={"Authorization": f"Bearer llmb_guess{i:04d}"})
        codes.append(r.status_code)
        if i == 999:
            assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["fields"][0]["path"] == "header.Authorization"
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert attacker.get("/v1/jobs", headers=env["good"]).status_code == 429  # checked before the token
    assert other.get("/v1/jobs", headers=env["good"]).status_code == 200  # other addresses unaffected
    assert other.get("/").status_code == 200  # no token sent: not a failure, not limited


def test_security_headers_on_every_answer(env):
    c = TestClient(env["app"], raise_server_exceptions=False)
    manifest = {"name": "x", "task": "summarize", "input": {"uri": str(env["tmp"] / "in.parquet")},
                "output": {"uri": str(env["tmp"] / "out")}}
    answers = {
        "status page": c.get("/"),
        "healthz": c.get("/healthz"),
        "list": c.get("/v1/jobs", headers=env["good"]),
        "401": c.get("/v1/jobs"),
        "404 job": c.get("/v1/jobs/job-nope", headers=env["good"]),
        "404 route": c.get("/nowhere"),
        "422": c.get("/v1/jobs", params={"limit": 0}, headers=env["good"]),
        "413": c.post("/v1/jobs", json={"manifest": {**manifest, "name": "x" * 8000}}, headers=env["good"]),
        "201": c.post("/v1/jobs", json={"manifest": manifest}, headers=env["good"]),
        "metrics": c.get("/metrics", headers=env["good"]),
    }
    assert [r.status_code for r in answers.values()] == [200, 200, 200, 401, 404, 404, 422, 413, 201, 200]
    for what, r in answers.items():
        h = r.headers
        assert h["x-content-type-options"] == "nosniff", what
        assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer", what
        assert "default-src 'none'" in h["content-security-policy"] and "frame-ancestors 'none'" in h[
            "content-security-policy"], what
        assert h["cache-control"] == "no-store", what
        assert "strict-transport-security" not in h, what  # plain HTTP
    tls = TestClient(env["app"], base_url="https://testserver")
    assert tls.get("/healthz").headers["strict-transport-security"] == "max-age=31536000"


def test_an_unexpected_error_is_a_json_500_with_the_headers(env, monkeypatch):
    store = env["app"].state.store

    def broken(*_a, **_k):
        raise RuntimeError("db on fire at 10.0.0.5")

    monkeypatch.setattr(store, "list_jobs", broken)
    r = TestClient(env["app"], raise_server_exceptions=False).get("/v1/jobs", headers=env["good"])
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error; see the service log"
    assert "10.0.0.5" not in r.text and r.headers["x-frame-options"] == "DENY"


def test_docs_only_when_asked(env):
    assert TestClient(env["app"]).get("/docs").status_code == 404
    docs = create_app(env["app"].state.store, docs=True)
    r = TestClient(docs).get("/docs")
    assert r.status_code == 200 and "cdn.jsdelivr.net" in r.headers["content-security-policy"]
    assert TestClient(docs).get("/openapi.json").json()["info"]["title"] == "llmbatch"
