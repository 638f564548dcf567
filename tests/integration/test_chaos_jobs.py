"""Failures injected mid-job on a two-node Ray cluster over S3: an actor killed, a node killed,
the S3 server stopped for 20 s, a shard that can never be read. Every test checks the output the
way a user would: the files the published marker lists hold every input id exactly once, and no
other part lies beside them.
"""

from __future__ import annotations

import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from cluster.storage import s3
from tests.support.s3_jobs import (
    ALL_IDS, Background, SMALL_ROWS, assert_every_id_once, assert_mid_job, busy_inference_actors,
    committed_at, job_manifest, output_ids, parts, rows, run_once, shard_of, wait_for_parts,
)
from tests.support.output_files import marker

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.chaos]

# ---- chaos -------------------------------------------------------------------------------


def test_actor_killed_mid_shard_is_retried_elsewhere(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/actor-kill"
    with capture_logs() as events:  # the pool runs in this process: its structured events land here
        job = Background(job_manifest(data_bucket, out), two_node_cluster)
        wait_for_parts(out, 2)
        deadline = time.monotonic() + 10
        while not (busy := busy_inference_actors(two_node_cluster)):
            assert time.monotonic() < deadline, "no inference actor was working on a shard"
            time.sleep(0.05)
        assert_mid_job(job, out)
        killed_at = time.time()
        busy[0].send_signal(signal.SIGKILL)
        result = job.join()
    assert result.status == "succeeded", result.error
    assert_every_id_once(out, ALL_IDS)
    # The kill cost a shard its first attempt, and a second attempt committed that shard.
    lost = [e for e in events if e["event"] == "shard.actor_died"]
    assert [e["attempt"] for e in lost] == [1], f"expected one shard to lose its actor once: {lost}"
    retried = lost[0]["shard_id"]
    part = next(p for p in parts(out) if shard_of(p) == retried)
    assert committed_at(out, part) >= killed_at, f"shard {retried} was not redone"


def test_node_killed_mid_job_its_shards_finish_elsewhere(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/node-kill"
    job = Background(job_manifest(data_bucket, out, max_shard_attempts=4), two_node_cluster)
    wait_for_parts(out, 2)
    assert_mid_job(job, out)
    two_node_cluster.kill_node2()
    try:
        result = job.join()
        assert result.status == "succeeded", result.error
        assert_every_id_once(out, ALL_IDS)
    finally:
        two_node_cluster.start_node2()  # later tests get two nodes again


def test_s3_outage_of_20s_mid_job_is_ridden_out(two_node_cluster, data_bucket, moto_server):
    out = f"s3://{data_bucket}/out/outage"
    job = Background(job_manifest(data_bucket, out), two_node_cluster)
    wait_for_parts(out, 2)
    assert_mid_job(job, out)
    moto_server.stop()
    try:
        time.sleep(20)
    finally:
        moto_server.restart()
    result = job.join()
    assert result.status == "succeeded", result.error
    assert_every_id_once(out, ALL_IDS)


def _corrupt_second_row_group(bucket: str) -> tuple[str, set[int]]:
    """A file whose footer is fine (so planning passes) but whose second row group cannot be
    decoded: every attempt at that shard fails the same way."""
    sink = pa.BufferOutputStream()
    pq.write_table(rows(list(range(5000, 5100))), sink, row_group_size=50, compression="zstd")
    data = bytearray(sink.getvalue().to_pybytes())
    meta = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata
    col = meta.row_group(1).column(1)  # the text column of row group 1
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    uri = f"s3://{bucket}/broken/poison.parquet"
    s3.write_bytes(uri, bytes(data))
    return uri, set(range(5050, 5100))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_shard_that_keeps_failing(two_node_cluster, data_bucket, policy):
    poison, bad_ids = _corrupt_second_row_group(data_bucket)
    out = f"s3://{data_bucket}/out/poison-{policy}"
    inputs = [f"s3://{data_bucket}/in/small-000.parquet", poison]
    m = job_manifest(data_bucket, out, input={"uri": inputs}, on_shard_failure=policy, max_shard_attempts=2)
    result = run_once(m, two_node_cluster)
    good = set(range(SMALL_ROWS)) | (set(range(5000, 5100)) - bad_ids)
    if policy == "fail":
        assert result.status == "failed"
        assert "after 2 attempt(s)" in result.error
        assert marker(out) == (None, None)  # nothing published
        ids = output_ids(out)  # whatever was committed before the job stopped: once, and good rows only
        assert len(ids) == len(set(ids)) and set(ids) <= good
    else:  # published, but as partial: a pipeline waiting for _SUCCESS.json is not told all is well
        assert result.status == "partial", result.error
        name, published = marker(out)
        assert name == "_PARTIAL.json" and "skipped" in published["reasons"][0]
        skipped = published["skipped_failed_shards"]
        assert len(skipped) == 1 and next(iter(skipped.values()))  # its id, with the reason
        assert_every_id_once(out, good)
