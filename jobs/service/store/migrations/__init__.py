"""Alembic migrations for the job store; `jobs.service.store.job_store.migrate(engine)` runs them programmatically."""
