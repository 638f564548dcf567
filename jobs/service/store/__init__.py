"""jobs.service.store."""
