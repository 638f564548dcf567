"""workers.output."""
