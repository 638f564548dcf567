"""The inference actor as a Ray actor: a `ShardProcessor` in its own process on the cluster."""

from __future__ import annotations

from workers.inference.actor import ShardProcessor
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard


def make_actor_class():
    """The Ray actor class, built lazily so importing this module never needs Ray."""
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0)
    class InferenceActor:
        def __init__(self, s3_settings, scope, *args, **kwargs):
            from cluster import logs, storage

            logs.ensure_configured()
            storage.use_s3_settings(s3_settings)  # the driver's, before anything reads storage
            storage.use_scope(scope)  # the job's: the model folder and every file are read under it
            self.processor = ShardProcessor(*args, **kwargs)

        def ready(self) -> str:
            return self.processor.name

        def process(self, shard: Shard, work: ShardWork) -> ShardReport:
            return self.processor.process(shard, work)

    return InferenceActor
