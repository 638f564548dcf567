"""workers.training."""
