"""jobs.run."""
