"""jobs.cli."""
