"""jobs.service."""
