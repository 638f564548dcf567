"""Two tenants and an admin against the real service (uvicorn subprocess, real HTTP, the CLI):
reads scoped to the owner, tokens listed and revoked from the CLI, the audit log read through
the API; and `serve --tls-cert/--tls-key` called by a real TLS client."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time

import httpx
import pytest

from jobs.cli.client import Client, ClientError
from tests.support.service_fixtures import Service, run_cli

pytestmark = [pytest.mark.integration]


def _token(db: str, name: str, *flags: str) -> str:
    out = run_cli("tokens", "create", name, *flags, "--db", db)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]


def test_two_tenants_and_an_admin_over_http(tmp_path):
    db = f"sqlite:///{tmp_path}/jobs.db"
    alice = _token(db, "alice", "--input-prefix", str(tmp_path / "a"), "--output-prefix", str(tmp_path / "a"))
    bob = _token(db, "bob", "--input-prefix", str(tmp_path / "b"), "--output-prefix", str(tmp_path / "b"),
                 "--expires-in", "7d")
    root = _token(db, "root", "--input-prefix", "*", "--output-prefix", "*", "--admin")
    svc = Service(db, None, runner=None, extra=["--no-scheduler"])
    clients = {name: Client(svc.url, secret) for name, secret in (("alice", alice), ("bob", bob), ("root", root))}
    try:
        def submit(who: str) -> str:
            m = {"name": f"{who}-job", "task": "summarize", "input": {"uri": str(tmp_path / who[0] / "in.parquet")},
                 "output": {"uri": str(tmp_path / who[0] / "out")}}
            return clients[who].submit(m)["job"]["id"]

        a, b = submit("alice"), submit("bob")
        assert [j["id"] for j in clients["alice"].list()] == [a]
        assert {j["id"] for j in clients["root"].list()} == {a, b}
        with pytest.raises(ClientError) as err:
            clients["alice"].get(b)
        assert err.value.status == 404 and err.value.message == f"no job {b}"
        assert httpx.get(svc.url + "/metrics", timeout=10).status_code == 401
        assert httpx.get(svc.url + "/openapi.json", timeout=10).status_code == 404  # no --docs

        listed = run_cli("tokens", "list", "--db", db)
        assert listed.returncode == 0 and [ln.split("\t")[0] for ln in listed.stdout.splitlines()] == [
            "alice", "bob", "root"]
        assert all(s not in listed.stdout for s in (alice, bob, root))
        assert run_cli("tokens", "revoke", "bob", "--db", db).returncode == 0
        with pytest.raises(ClientError) as err:
            clients["bob"].list()
        assert err.value.status == 401

        env = {"LLMBATCH_TOKEN": root}
        audit = run_cli("audit", "--server", svc.url, "--limit", "10", env=env)
        assert audit.returncode == 0, audit.stderr
        actions = [ln.split("\t")[3] for ln in audit.stdout.splitlines()]
        assert actions[:3] == ["token_revoke", "submit", "submit"] and actions.count("token_create") == 3
        refused = run_cli("audit", "--server", svc.url, env={"LLMBATCH_TOKEN": alice})
        assert refused.returncode == 1 and "admins only" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        for c in clients.values():
            c.close()
        svc.stop()


class TlsService(Service):
    """The service with --tls-cert/--tls-key; ready when an HTTPS call that trusts `cert` answers."""

    def __init__(self, db: str, cert: str, key: str):
        self.trust = ssl.create_default_context(cafile=cert)  # httpx's verify= for this certificate
        super().__init__(db, None, runner=None, extra=["--no-scheduler", "--tls-cert", cert, "--tls-key", key])

    def wait_ready(self, timeout: float = 90.0) -> None:
        self.plain_url, self.url = self.url, self.url.replace("http://", "https://")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", verify=self.trust, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise TimeoutError(f"service not ready: {self.log_path.read_text()[-3000:]}")


def _self_signed(folder) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_serve_with_tls_and_a_real_tls_client(tmp_path):
    db = f"sqlite:///{tmp_path}/jobs.db"
    half = run_cli("serve", "--tls-cert", str(tmp_path / "nothing.pem"), "--db", db, "--no-scheduler")
    assert half.returncode == 2 and "give both --tls-cert and --tls-key" in half.stderr
    token = _token(db, "alice", "--input-prefix", str(tmp_path), "--output-prefix", str(tmp_path))
    cert, key = _self_signed(tmp_path)
    svc = TlsService(db, cert, key)
    try:
        r = httpx.get(svc.url + "/v1/jobs", headers={"Authorization": f"Bearer {token}"}, verify=svc.trust,
                      timeout=10)
        assert r.status_code == 200 and r.json() == {"jobs": []}
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port gets no answer
            httpx.get(svc.plain_url + "/healthz", timeout=10)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # not a trusted CA
            httpx.get(svc.url + "/healthz", timeout=10)
    finally:
        svc.stop()
