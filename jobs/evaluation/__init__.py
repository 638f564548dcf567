"""jobs.evaluation."""
