"""workers: Ray actors - shard planning, the inference pool and shard commit, training."""
