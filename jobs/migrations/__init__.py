"""Alembic migrations for the job store; `jobs.store.migrate(url)` runs them programmatically."""
