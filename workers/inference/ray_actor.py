"""The inference actor as a Ray actor: a `ShardProcessor` in its own process on the cluster.

Threaded (two calls at a time) so that `progress()` answers while `process()` works on a
shard: the pool reads each shard's rows, errors and tokens batch by batch.

Its process starts with a bounded OpenMP spin (GOMP_SPINCOUNT, the runtime_env below, merged by
Ray with the job's; the driver's own OMP_WAIT_POLICY / GOMP_SPINCOUNT instead when the user set
them): libgomp reads it once, when torch loads; idle threads that spin without end slow the
engine down many times over on a busy node, threads that sleep at once slow every step on an
idle one (llm_core/threads.py).
"""

from __future__ import annotations

from llm_core.threads import worker_env
from workers.inference.actor import ShardProcessor
from workers.inference.shard_task import ShardReport, ShardWork
from workers.inference.shards import Shard


def make_actor_class():
    """The Ray actor class, built lazily so importing this module never needs Ray."""
    import ray

    @ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2,
                runtime_env={"env_vars": worker_env()})
    class InferenceActor:
        def __init__(self, s3_settings, scope, *args, log_file: str | None = None, **kwargs):
            from cluster import logs, storage

            if log_file:  # a local run on a terminal: the actors' lines go to the run's log file
                logs.configure_file(log_file)
            else:
                logs.ensure_configured()
            storage.use_s3_settings(s3_settings)  # the driver's, before anything reads storage
            storage.use_scope(scope)  # the job's: the model folder and every file are read under it
            self.processor = ShardProcessor(*args, **kwargs)
            self.current: tuple | None = None  # (shard id, rows done, error rows, completion tokens)

        def ready(self) -> str:
            return self.processor.name

        def process(self, shard: Shard, work: ShardWork) -> ShardReport:
            sid = shard.shard_id
            self.current = (sid, 0, 0, 0)

            def on_batch(rows: int, errors: int, tokens: int) -> None:
                self.current = (sid, rows, errors, tokens)  # one assignment: progress() reads it whole

            try:
                return self.processor.process(shard, work, on_batch=on_batch)
            finally:
                self.current = None

        def progress(self) -> tuple | None:
            """The current shard's counts so far, or None between shards."""
            return self.current

    return InferenceActor
