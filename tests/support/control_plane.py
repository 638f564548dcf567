"""Fixtures for the control-plane tests: a Ray cluster that outlives the services of one test
module, the services a test starts (stopped when it ends), a fresh PostgreSQL database, and a
SQLite store with one tenant token for alice (read and write under the test's tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.service_fixtures import (
    RayCluster,
    Service,
    create_pg_database,
    drop_pg_database,
    postgres_available,
    run_cli,
)


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """The URL of a new, empty database on the local server, dropped afterwards; skips the test
    when no server listens on 127.0.0.1:5432."""
    if not postgres_available():
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    """A 2-CPU Ray cluster started with `ray start`, shared by one test module."""
    cluster = RayCluster(num_cpus=2)
    yield cluster
    cluster.stop()


@pytest.fixture
def services() -> Iterator[list[Service]]:
    """A list the test appends the services it starts to; each is stopped when the test ends."""
    started: list[Service] = []
    yield started
    for svc in started:
        svc.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/jobs.db"


@pytest.fixture
def token(db, tmp_path) -> str:
    out = run_cli("tokens", "create", "alice", "--input-prefix", str(tmp_path), "--output-prefix",
                  str(tmp_path), "--db", db)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1]
