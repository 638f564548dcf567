"""jobs.manifest."""
