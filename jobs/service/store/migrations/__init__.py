"""Alembic migrations for the job store; `jobs.service.store.job_store.migrate(url)` runs them programmatically."""
