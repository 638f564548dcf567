"""Token lifecycle on a real store and the real app: list (never a secret), revoke, expiry,
last-used at most once a minute, the admin routes, the audit log (API and CLI), `llmbatch tokens`."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobs.api.app import create_app
from jobs.cli.main import build_parser
from jobs.service import auth
from jobs.service.auth import authenticate, create_token
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import tokens
from jobs.service.tokens import expires_at, list_tokens, parse_duration, revoke_token


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/jobs.db")
    yield s
    s.close()


def main(argv: list[str]) -> int:
    """`llmbatch ARGV` in-process, without main()'s logging setup (it would bind structlog to
    pytest's captured stdout, closed after this test)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def test_durations():
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("90m") == timedelta(minutes=90)
    for bad in ("30", "d", "0d", "-1d", "1y", "1.5h"):
        with pytest.raises(ValueError, match="positive number followed by s, m, h, d or w"):
            parse_duration(bad)


def test_expired_and_revoked_tokens_are_refused(store):
    live = create_token(store, "live", input_prefixes=["*"], output_prefixes=["*"], expires_at=expires_at("1d"))
    old = create_token(store, "old", input_prefixes=["*"], output_prefixes=["*"],
                       expires_at=utcnow() - timedelta(seconds=1))
    gone = create_token(store, "gone", input_prefixes=["*"], output_prefixes=["*"])
    assert revoke_token(store, "gone", actor="root")[1] is True
    assert revoke_token(store, "gone", actor="root")[1] is False  # once; the first time is kept
    assert authenticate(store, live).name == "live"
    assert authenticate(store, old) is None and authenticate(store, gone) is None
    assert auth.principal_by_name(store, "old") is None  # an expired owner's schedules stop too
    c = TestClient(create_app(store))
    for secret in (old, gone):
        r = c.get("/v1/jobs", headers=bearer(secret))
        assert r.status_code == 401 and r.json()["error"]["message"] == "unknown, expired or revoked token"
    assert c.get("/v1/jobs", headers=bearer(live)).status_code == 200


def test_last_used_is_written_at_most_once_a_minute(store, monkeypatch):
    secret = create_token(store, "t", input_prefixes=["*"], output_prefixes=["*"])
    assert list_tokens(store)[0]["last_used_at"] is None
    writes = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda _c, _cur, stmt, *_a: writes.append(stmt) if stmt.lstrip().upper().startswith("UPDATE") else None)
    for _ in range(50):
        authenticate(store, secret)
    assert len(writes) == 1
    first = list_tokens(store)[0]["last_used_at"]
    assert first is not None
    later = first + timedelta(minutes=2)
    monkeypatch.setattr(auth, "utcnow", lambda: later)
    authenticate(store, secret)
    assert len(writes) == 2 and list_tokens(store)[0]["last_used_at"] == later


def test_admin_routes_list_revoke_and_audit(store):
    root = create_token(store, "root", input_prefixes=["*"], output_prefixes=["*"], admin=True)
    alice = create_token(store, "alice", input_prefixes=["*"], output_prefixes=["*"], expires_at=expires_at("30d"))
    c = TestClient(create_app(store))
    for path in ("/v1/tokens", "/v1/audit"):
        r = c.get(path, headers=bearer(alice))
        assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    listed = c.get("/v1/tokens", headers=bearer(root)).json()["tokens"]
    assert [t["name"] for t in listed] == ["root", "alice"]
    assert set(listed[1]) == {"name", "input_prefixes", "output_prefixes", "admin", "created_at", "expires_at",
                              "last_used_at", "revoked_at"}
    assert listed[1]["expires_at"] and listed[1]["last_used_at"] and listed[0]["revoked_at"] is None
    text = json.dumps(listed)
    assert alice not in text and auth.hash_token(alice) not in text
    assert c.post("/v1/tokens/nobody/revoke", headers=bearer(root)).status_code == 404
    r = c.post("/v1/tokens/alice/revoke", headers=bearer(root))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert c.get("/v1/jobs", headers=bearer(alice)).status_code == 401
    page = c.get("/v1/audit", params={"limit": 2}, headers=bearer(root)).json()
    assert [(x["actor"], x["action"]) for x in page["lines"]] == [("root", "token_revoke"), ("cli", "token_create")]
    assert page["lines"][0]["detail"] == {"token": "alice", "outcome": "revoked"}
    older = c.get("/v1/audit", params={"before": page["next_before"]}, headers=bearer(root)).json()
    assert [x["detail"]["token"] for x in older["lines"]] == ["root"] and older["next_before"] is None
    only = c.get("/v1/audit", params={"actor": "root"}, headers=bearer(root)).json()["lines"]
    assert [x["action"] for x in only] == ["token_revoke"]


def test_cli_tokens_create_list_revoke_and_audit(tmp_path, capsys):
    db = f"sqlite:///{tmp_path}/cli.db"
    assert main(["tokens", "create", "ci", "--input-prefix", "s3://team-a/", "--output-prefix", "s3://team-a/out",
                 "--expires-in", "30d", "--db", db]) == 0
    secret = capsys.readouterr().out.split()[-1]
    assert main(["tokens", "create", "ci", "--input-prefix", "*", "--output-prefix", "*", "--db", db]) == 2
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokens", "create", "x", "--input-prefix", "*", "--output-prefix", "*", "--expires-in", "soon"])
    assert "not a duration" in capsys.readouterr().err
    assert main(["tokens", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ci\tactive\tadmin=no\tread=s3://team-a/\twrite=s3://team-a/out/") and secret not in out
    assert main(["tokens", "revoke", "ci", "--db", db]) == 0 and "revoked" in capsys.readouterr().out
    assert main(["tokens", "revoke", "nobody", "--db", db]) == 1 and "no token named 'nobody'" in capsys.readouterr().err
    assert main(["tokens", "list", "--db", db]) == 0 and "\trevoked " in capsys.readouterr().out
    assert main(["audit", "--db", db, "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["action"] for x in lines] == ["token_revoke", "token_create"]
    assert lines[0]["actor"].startswith("cli") and lines[1]["detail"]["expires_at"]
    s = Store(db)
    with s.engine.connect() as conn:
        assert conn.execute(sa.select(tokens.c.revoked_at)).scalar() is not None
    s.close()
