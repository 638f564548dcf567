"""cluster.storage's s3:// branches against a real S3-protocol server on loopback (no patching)."""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from cluster.storage import s3

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def test_objects_round_trip(s3_bucket):
    base = f"s3://{s3_bucket}/dir"
    storage.write_bytes(f"{base}/a.txt", b"hello")
    storage.write_bytes(f"{base}/sub/b.txt", b"world!")
    assert storage.read_bytes(f"{base}/a.txt") == b"hello"
    assert storage.exists(f"{base}/a.txt") and not storage.exists(f"{base}/missing")
    assert storage.list_names(base) == ["a.txt"]  # direct children only
    assert [r.size for r in s3.list_objects(base + "/")] == [5, 6]
    with pytest.raises(FileNotFoundError, match="missing"):
        storage.read_bytes(f"{base}/missing")
    storage.delete(f"{base}/a.txt")
    storage.delete_prefix(base)
    assert s3.list_objects(base + "/") == []


def test_listing_prefix_glob_and_list(s3_bucket):
    fs, _ = storage.filesystem(f"s3://{s3_bucket}/x")
    for name in ["in/a.parquet", "in/b.parquet", "in/_SUCCESS.json", "in/deep/c.parquet", "other/d.parquet"]:
        pq.write_table(pa.table({"id": [1]}), f"{s3_bucket}/{name}", filesystem=fs)
    b = f"s3://{s3_bucket}"
    names = lambda refs: [r.uri.removeprefix(b + "/") for r in refs]  # noqa: E731
    assert names(storage.list_files(f"{b}/in")) == ["in/a.parquet", "in/b.parquet", "in/deep/c.parquet"]
    assert names(storage.list_files(f"{b}/in/*.parquet")) == ["in/a.parquet", "in/b.parquet"]
    assert names(storage.list_files([f"{b}/in/a.parquet", f"{b}/other/"])) == ["in/a.parquet", "other/d.parquet"]
    with pytest.raises(FileNotFoundError, match="nothing"):
        storage.list_files(f"{b}/nothing/")


def test_parquet_with_many_row_groups_through_pyarrow(s3_bucket):
    uri = f"s3://{s3_bucket}/big.parquet"
    fs, path = storage.filesystem(uri)
    table = pa.table({"id": list(range(20_000)), "text": [f"row {i}" for i in range(20_000)]})
    pq.write_table(table, path, filesystem=fs, row_group_size=1_000)
    f = pq.ParquetFile(fs.open_input_file(path))
    assert f.metadata.num_row_groups == 20
    assert f.read_row_group(7).column("id").to_pylist() == list(range(7_000, 8_000))


def test_put_if_absent_racing_writers_commit_once(s3_bucket):
    uri = f"s3://{s3_bucket}/part-0001.parquet"
    results: dict[int, bool] = {}
    start = threading.Barrier(8)

    def attempt(i: int) -> None:
        start.wait()
        results[i] = storage.put_if_absent(uri, f"attempt {i}".encode())

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, results
    assert storage.read_bytes(uri) == f"attempt {winners[0]}".encode()


def test_multipart_put_and_conditional_multipart(s3_bucket, monkeypatch):
    monkeypatch.setenv("LLMBATCH_S3_MULTIPART_THRESHOLD", str(5 * 1024 * 1024))
    data = os.urandom(17 * 1024 * 1024)  # three 8 MiB parts
    uri = f"s3://{s3_bucket}/big.bin"
    assert storage.put_if_absent(uri, data) is True
    assert storage.put_if_absent(uri, os.urandom(6 * 1024 * 1024)) is False  # loses at completion
    head = s3.head(uri)
    assert head.size == len(data) and head.version.endswith("-3")  # really multipart
    storage.write_bytes(f"s3://{s3_bucket}/big2.bin", data)
    assert storage.read_bytes(f"s3://{s3_bucket}/big2.bin") == data
    # An aborted conditional upload leaves no half object and no dangling upload.
    assert s3.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_calls_ride_out_an_outage(s3_bucket, moto_server):
    uri = f"s3://{s3_bucket}/during-outage.txt"
    storage.write_bytes(uri, b"before")
    moto_server.stop()
    threading.Timer(6.0, moto_server.restart).start()
    t0 = time.monotonic()
    assert storage.read_bytes(uri) == b"before"
    assert storage.put_if_absent(f"s3://{s3_bucket}/new.txt", b"x") is True
    assert time.monotonic() - t0 >= 5.0  # it really waited for the server


def test_a_store_that_stays_down_fails_with_the_error(s3_bucket, moto_server, monkeypatch):
    monkeypatch.setenv("LLMBATCH_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("LLMBATCH_S3_RETRY_SECONDS", "2")
    moto_server.stop()
    try:
        with pytest.raises(Exception, match="(?i)connect"):
            storage.read_bytes(f"s3://{s3_bucket}/x")
    finally:
        moto_server.restart()
