"""workers.inference."""
