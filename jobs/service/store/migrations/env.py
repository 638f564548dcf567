"""Alembic environment: the connection comes from jobs.service.store.job_store.migrate (config.attributes)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from jobs.service.store.tables import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic upgrade` from a shell: sqlalchemy.url in the ini
        engine = create_engine(config.get_main_option("sqlalchemy.url"))
        with engine.connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:
    # SQLite cannot ALTER most things in place: batch mode rebuilds tables when needed.
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
