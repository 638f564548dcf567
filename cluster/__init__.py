"""cluster: where work runs and where data lives (Ray, object storage, model cache, logging)."""
