"""The actor pool on a real local Ray: progress within a shard, the per-shard timeout that
replaces a hung actor, and the job deadline that stops the pool."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskSpec
from workers.inference.pool import ActorPool, PoolConfig
from workers.inference.shard_task import ShardWork
from workers.inference.shards import plan_shards
from workers.output.layout import new_run_id
from workers.output.location import OutputLocation

pytestmark = pytest.mark.integration


def _input(path, rows: int, prefix: str):
    ids = [f"{prefix}-{i}" for i in range(rows)]
    texts = [f"Debian package {i} provides tools for the network and the shell." for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path)
    return plan_shards(str(path), {"id": "id", "text": "text"})


RUN_ID = new_run_id()
# A shard of this many rows at 400 new tokens takes ~25 s on an idle 2-core machine (30 rows took
# 3.4 s), far past the 1.5 s shard timeout and the 8 s deadline below, however idle the machine.
SLOW_ROWS = 200


def _work(tmp_path, max_new_tokens: int) -> ShardWork:
    return ShardWork(job_id="pool-test", output=OutputLocation.at(str(tmp_path / "out")),
                     task=TaskSpec("summarize"), sampling=SamplingParams(max_new_tokens=max_new_tokens),
                     id_column="id", text_column="text", run_id=RUN_ID, id_type="string")


def _pool(tiny_dir, **config) -> ActorPool:
    return ActorPool(PoolConfig(workers=1, num_cpus=1, num_gpus=0, actor_args=(str(tiny_dir),),
                                actor_kwargs=dict(engine="hf", batch_size=2, threads=1), **config), "pool-test")


def test_progress_moves_batch_by_batch_within_a_shard(ray_local, tiny_dir, tmp_path):
    shards = _input(tmp_path / "in.parquet", 24, "row")
    assert len(shards) == 1
    seen: list[dict] = []
    reports = []
    outcome = _pool(tiny_dir, progress_every_s=0.2).run(shards, _work(tmp_path, 48), reports.append,
                                                        on_progress=seen.append)
    assert [r.rows for r in reports] == [24] and not outcome.failed
    sid = shards[0].shard_id
    partial = [s[sid] for s in seen if sid in s and 0 < s[sid][0] < 24]
    assert partial, f"no count within the shard: {seen}"
    assert all(errors == 0 and tokens > 0 for _, errors, tokens in partial)
    assert outcome.shard_seconds[sid] > 0 and reports[0].seconds == outcome.shard_seconds[sid]


def test_a_shard_past_its_timeout_is_abandoned_and_its_actor_replaced(ray_local, tiny_dir, tmp_path):
    slow = _input(tmp_path / "slow.parquet", SLOW_ROWS, "slow")
    quick = _input(tmp_path / "quick.parquet", 2, "quick")
    pool = _pool(tiny_dir, shard_timeout_s=1.5, max_attempts=2, stop_on_failure=False)
    reports = []
    outcome = pool.run(slow + quick, _work(tmp_path, 400), reports.append)
    sid = slow[0].shard_id
    assert outcome.failed == {sid: "timed out after 1.5 s"}
    assert outcome.attempts[sid] == 2
    # the pool's only actor was killed at the first timeout: a replacement did the quick shard
    assert [r.shard_id for r in reports] == [quick[0].shard_id] and reports[0].committed


def test_the_deadline_stops_the_pool_and_leaves_shards_undone(ray_local, tiny_dir, tmp_path):
    shards = _input(tmp_path / "in.parquet", SLOW_ROWS, "row")
    started = time.monotonic()
    reports = []
    outcome = _pool(tiny_dir).run(shards, _work(tmp_path, 400), reports.append, deadline=started + 8)
    assert outcome.timed_out and not outcome.failed and not outcome.cancelled and not reports
    assert time.monotonic() - started < 8 + 5
    out = OutputLocation.at(str(tmp_path / "out"))
    time.sleep(1)  # the killed actor commits nothing afterwards
    assert out.committed_shards(RUN_ID) == set()
