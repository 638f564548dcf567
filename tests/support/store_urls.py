"""`db_as_written`: a store URL as a user types it, for tests run once on each database: an
SQLite file, and a fresh PostgreSQL database through a plain `postgresql://` URL (no driver
named: the one SQLAlchemy picks for it is a dependency of ours)."""

from __future__ import annotations

import pytest

from tests.support.control_plane import fresh_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_as_written(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/jobs.db"
        return
    with fresh_pg_database() as url:
        yield url.replace("postgresql+psycopg2://", "postgresql://", 1)
