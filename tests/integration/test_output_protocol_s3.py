"""The output protocol on the loopback S3 server: snapshots, garbage collection that deletes only
our own unlisted objects (an output at the bucket root included), the writer lease."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest

from cluster import storage
from cluster.storage import s3
from tests.support.lease_race import race_for_lease
from workers.output.layout import PARTIAL_FILE, SUCCESS_FILE
from workers.output.lease import LeaseLost, OutputBusyError, OutputLease, generations
from workers.output.location import OutputExistsError, OutputLocation
from workers.output.snapshot import publish_snapshot

pytestmark = [pytest.mark.integration, pytest.mark.s3]

FP = {"input": [{"uri": "s3://b/in.parquet", "size": 1, "version": "e"}], "engine": "native"}


def _part(ids: list[str], errors: dict[int, str] | None = None) -> pa.Table:
    errors = errors or {}
    return pa.table({"id": ids, "summary": ["s"] * len(ids), "error": [errors.get(i) for i in range(len(ids))],
                     "error_kind": ["retriable" if i in errors else None for i in range(len(ids))],
                     "attempts": pa.array([1] * len(ids), pa.int32())})


def _publish(out, run_id, files, status="succeeded", lease=None, fp=FP):
    return publish_snapshot(out, status=status, job_id="job-1", run_id=run_id, fingerprint=fp, files=files,
                            id_column="id", id_type="string", summary={}, reasons=[], lease=lease)


def _keys(bucket: str) -> list[str]:
    return sorted(r.uri[len(f"s3://{bucket}/"):] for r in s3.list_objects(f"s3://{bucket}/"))


def test_overwrite_at_the_bucket_root_keeps_every_other_object(s3_bucket):
    """`output.uri: s3://team-a`: other jobs' outputs and inputs in the bucket survive every step."""
    others = {"inputs/day1.parquet": b"input", "other-job/data/x.parquet": b"theirs", "notes.txt": b"n",
              "data/not-ours.parquet": b"foreign", "_errors/theirs.parquet": b"foreign"}
    for key, body in others.items():
        storage.write_bytes(f"s3://{s3_bucket}/{key}", body)
    out = OutputLocation.at(f"s3://{s3_bucket}")
    with pytest.raises(OutputExistsError, match="already holds"):
        out.prepare("error_if_exists", FP)
    first = out.prepare("overwrite", FP)
    assert out.commit_part(first.run_id, "aa", _part(["1", "2"], {1: "boom"}))
    assert not out.commit_part(first.run_id, "aa", _part(["9"]))
    _publish(out, first.run_id, {"aa": out.part_path(first.run_id, "aa")})
    second = out.prepare("overwrite", {**FP, "engine": "baseline"})
    out.commit_part(second.run_id, "bb", _part(["3"]))
    assert out.read_snapshot(["id"]).column("id").to_pylist() == ["1", "2"]  # the old one until the publish
    marker = _publish(out, second.run_id, {"bb": out.part_path(second.run_id, "bb")}, fp={**FP, "engine": "baseline"})
    assert out.read_snapshot(["id"]).column("id").to_pylist() == ["3"]
    assert _keys(s3_bucket) == sorted([*others, SUCCESS_FILE, f"data/{second.run_id}/part-bb.parquet"])
    assert all(storage.read_bytes(f"s3://{s3_bucket}/{k}") == v for k, v in others.items())
    assert marker["errors_file"] is None and out.errors_table().num_rows == 0


def test_error_if_exists_sees_nested_objects_and_ignores_a_lease(s3_bucket):
    out = OutputLocation.at(f"s3://{s3_bucket}/jobs/x")
    with OutputLease.acquire(out, "job-a", renew_every_s=3600):
        assert not out.prepare("error_if_exists", FP).resumed  # only the lease: empty
    storage.write_bytes(f"s3://{s3_bucket}/jobs/x/deep/down/file.parquet", b"theirs")
    with pytest.raises(OutputExistsError, match="deep/down/file.parquet"):
        out.prepare("error_if_exists", FP)


def test_resume_partial_and_errors_on_s3(s3_bucket):
    out = OutputLocation.at(f"s3://{s3_bucket}/jobs/nightly")
    slot = out.prepare("resume", FP)
    out.write_manifest({"run_id": slot.run_id, "fingerprint": FP})
    out.commit_part(slot.run_id, "aa", _part(["1", "2"], {0: "engine crashed"}))
    partial = _publish(out, slot.run_id, {"aa": out.part_path(slot.run_id, "aa")}, status="partial")
    assert out.snapshot() == partial and out.success() is None
    assert out.errors_table().to_pylist() == [{"id": "1", "shard_id": "aa", "error": "engine crashed",
                                               "error_kind": "retriable", "attempts": 1}]
    again = out.prepare("resume", FP)
    assert again.run_id == slot.run_id and again.committed == {"aa"} and again.resumed
    with pytest.raises(OutputExistsError, match="engine: native -> baseline"):
        out.prepare("resume", {**FP, "engine": "baseline"})
    retry = out.prepare("retry_errors", FP)
    out.commit_part(retry.run_id, "aa", _part(["1", "2"]))
    done = _publish(out, retry.run_id, {"aa": out.part_path(retry.run_id, "aa")})
    assert out.snapshot() == done and not storage.exists(out.path(PARTIAL_FILE))
    assert not out.has_part(slot.run_id, "aa") and done["errors_file"] is None
    assert [k for k in _keys(s3_bucket) if "/_errors/" in k] == []
    assert sorted(out.read_snapshot(["id"]).column("id").to_pylist()) == ["1", "2"]


def test_lease_on_s3(s3_bucket):
    out = OutputLocation.at(f"s3://{s3_bucket}/out")
    stale = OutputLease.acquire(out, "job-a", ttl_s=0.5, renew_every_s=3600)
    with pytest.raises(OutputBusyError, match="being written by job job-a"):
        OutputLease.acquire(out, "job-b")
    time.sleep(0.7)
    winners, refused = race_for_lease(out, 4)
    assert len(winners) == 1 and len(refused) == 3
    assert generations(out) == [winners[0].generation]
    run = out.prepare("overwrite", FP).run_id
    out.commit_part(run, "aa", _part(["1"]))
    with pytest.raises(LeaseLost):
        _publish(out, run, {"aa": out.part_path(run, "aa")}, lease=stale)
    assert out.snapshot() is None
    marker = _publish(out, run, {"aa": out.part_path(run, "aa")}, lease=winners[0])
    assert out.success() == marker
    winners[0].release()
    OutputLease.acquire(out, "job-next", renew_every_s=3600).release()  # released: free at once
