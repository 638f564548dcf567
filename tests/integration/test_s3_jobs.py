"""Whole inference jobs on a two-node Ray cluster reading and writing S3 (a loopback server):
every row committed once, output modes alike on S3 and local folders, an overwrite at a bucket's
root that touches nothing but its own files, clear errors for a bad schema and for bad rows.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from jobs.run.inference import run_job
from cluster.storage import s3
from tests.support.output_files import read_part
from tests.support.s3_jobs import (
    ALL_IDS, SMALL_ROWS, TOTAL_ROWS, assert_every_id_once, committed_at, job_manifest, parts, rows,
    run_once, success,
)

pytestmark = [pytest.mark.integration, pytest.mark.s3]

# ---- end to end on S3 --------------------------------------------------------------------


def test_s3_job_commits_every_row_once(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/e2e"
    result = run_once(job_manifest(data_bucket, out), two_node_cluster)
    assert result.status == "succeeded", result.error
    assert_every_id_once(out, ALL_IDS)
    # _manifest.json first, every part in between, _SUCCESS.json last.
    created = json_at(out, "_manifest.json")["created_at"]
    finished = success(out)["finished_at"]
    assert all(created <= committed_at(out, n) <= finished for n in parts(out))
    assert success(out)["rows"] == TOTAL_ROWS
    # The model folder came from S3 once into each node's own cache.
    for node, cache in two_node_cluster.cache_dirs.items():
        assert list((cache / "models" / "s3").glob("*/model.safetensors")), f"no model in {node}'s cache"


@pytest.mark.parametrize("where", ["s3", "local"])
def test_output_modes_behave_the_same_on_s3_and_local(two_node_cluster, data_bucket, tmp_path, where):
    out = f"s3://{data_bucket}/out/modes" if where == "s3" else str(tmp_path / "out")
    small = {"uri": f"s3://{data_bucket}/in/small-00*.parquet"}  # 10 files: 10 shards
    expected = set(range(10 * SMALL_ROWS))
    first = run_once(job_manifest(data_bucket, out, input=small), two_node_cluster)
    assert first.status == "succeeded", first.error
    assert_every_id_once(out, expected)

    again = run_once(job_manifest(data_bucket, out, input=small), two_node_cluster)
    assert again.status == "failed" and "already holds" in again.error
    # As if the first run had died before this shard, and so before it published.
    storage.delete(f"{out}/_SUCCESS.json")
    storage.delete(f"{out}/{parts(out)[0]}")
    resumed = run_once(job_manifest(data_bucket, out, input=small, output={"mode": "resume"}), two_node_cluster)
    assert resumed.status == "succeeded", resumed.error
    assert (resumed.summary["shards_skipped"], resumed.summary["shards_committed"]) == (9, 1)
    assert_every_id_once(out, expected)
    overwritten = run_once(job_manifest(data_bucket, out, input=small, output={"mode": "overwrite"}), two_node_cluster)
    assert overwritten.status == "succeeded", overwritten.error
    assert overwritten.summary["shards_committed"] == 10
    assert_every_id_once(out, expected)  # the first run's parts are gone


def test_overwrite_at_a_bucket_root_deletes_only_its_own_files(two_node_cluster, data_bucket):
    bucket = f"root-{data_bucket}"
    s3.client().create_bucket(Bucket=bucket)
    others = {"other-job/part-00000.parquet": b"theirs", "notes.txt": b"keep me", "data/foreign.parquet": b"x",
              "data/20261130T000000Z-zzzzzzzz/part-0.parquet": b"not our run id", "_errors/readme.txt": b"y"}
    for key, body in others.items():
        s3.write_bytes(f"s3://{bucket}/{key}", body)
    out = f"s3://{bucket}"
    one_file = {"uri": f"s3://{data_bucket}/in/small-000.parquet"}
    for _ in range(2):
        result = run_once(job_manifest(data_bucket, out, input=one_file, output={"mode": "overwrite"}),
                          two_node_cluster)
        assert result.status == "succeeded", result.error
        assert_every_id_once(out, set(range(SMALL_ROWS)))  # the first run's part was collected
    for key, body in others.items():
        assert storage.read_bytes(f"s3://{bucket}/{key}") == body, f"{key} was touched"


def json_at(out: str, name: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}/{name}"))


def test_bad_schema_is_one_clear_error_before_any_work(moto_server, data_bucket):
    fs, _ = storage.filesystem(f"s3://{data_bucket}")
    pq.write_table(rows([1, 2]), f"{data_bucket}/bad/ok.parquet", filesystem=fs)
    pq.write_table(pa.table({"id": [3], "body": ["x"]}), f"{data_bucket}/bad/no-text.parquet", filesystem=fs)
    out = f"s3://{data_bucket}/out/bad"
    result = run_job(job_manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/bad/"}), job_id="bad-schema")
    assert result.status == "failed"
    assert f"s3://{data_bucket}/bad/no-text.parquet" in result.error and "'text' is missing" in result.error
    assert storage.list_names(out) == []  # refused before anything was written

    pq.write_table(pa.table({"id": [4], "text": [7]}), f"{data_bucket}/bad2/int-text.parquet", filesystem=fs)
    result = run_job(job_manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/bad2/*.parquet"}), job_id="b2")
    assert result.status == "failed" and "int-text.parquet" in result.error and "expected string" in result.error


def test_null_empty_and_oversized_rows_are_row_errors(two_node_cluster, data_bucket):
    fs, _ = storage.filesystem(f"s3://{data_bucket}")
    texts = ["A short description of a package.", None, "", "word " * 5000, "Another fine package."]
    pq.write_table(pa.table({"id": list(range(5)), "text": texts}), f"{data_bucket}/rows/x.parquet", filesystem=fs)
    out = f"s3://{data_bucket}/out/rows"
    m = job_manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/rows/x.parquet"},
                     params={"max_input_tokens": 512, "on_long_input": "error"}, max_error_rate=0.6)
    result = run_once(m, two_node_cluster)
    assert result.status == "succeeded", result.error  # 3 error rows of 5: within max_error_rate 0.6
    assert_every_id_once(out, set(range(5)))
    rows = read_part(out, parts(out)[0]).to_pylist()
    errors = {r["id"]: r["error"] for r in rows}
    assert errors[0] is None and errors[4] is None
    assert "null" in errors[1] and "empty" in errors[2] and "too long" in errors[3]
    assert {r["id"]: r["error_kind"] for r in rows if r["error"]} == {1: "permanent", 2: "permanent", 3: "permanent"}
    assert success(out)["error_rows"] == 3
