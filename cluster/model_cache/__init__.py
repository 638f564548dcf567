"""The per-node model cache: where model folders live ($LLMBATCH_CACHE, else ~/.cache/llmbatch),
one entry per built-in model and per S3 model content, a size cap with least-recently-used
eviction ($LLMBATCH_CACHE_MAX_GB), and the node-wide lock that lets one process fetch a model
while the others on the node wait.

Modules: paths (root, cap, node lock), usage (in-use locks, last-use records), lru (entries,
usage report, eviction), entry (the order of one use), download (S3 folder -> entry, verified),
file_hashes (memoized sha256 of local model files).
"""

from __future__ import annotations

from cluster.model_cache.lru import cache_usage
from cluster.model_cache.paths import cache_root, max_cache_bytes, models_dir, node_lock

__all__ = ["cache_root", "cache_usage", "max_cache_bytes", "models_dir", "node_lock"]
