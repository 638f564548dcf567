"""Published snapshots on local paths: a reader that trusts the marker reads exactly one run's
files; publishing replaces the marker, then garbage-collects only our own unlisted objects."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.output.layout import PARTIAL_FILE, SNAPSHOT_FORMAT, SUCCESS_FILE, new_run_id
from workers.output.lease import LeaseLost
from workers.output.location import OutputLocation
from workers.output.snapshot import collect_garbage, publish_snapshot

FP = {"input": [{"uri": "/in/a.parquet", "size": 10, "version": "1"}], "engine": "native"}


def _part(ids: list, errors: dict[int, str] | None = None, attempts: int = 1, kind: str = "retriable") -> pa.Table:
    errors = errors or {}
    return pa.table({
        "id": ids, "summary": [None if i in errors else f"s{i}" for i in range(len(ids))],
        "error": [errors.get(i) for i in range(len(ids))],
        "error_kind": [kind if i in errors else None for i in range(len(ids))],
        "attempts": pa.array([attempts] * len(ids), pa.int32()),
        "prompt_tokens": pa.array([10] * len(ids), pa.int32()),
        "completion_tokens": pa.array([0 if i in errors else 3 for i in range(len(ids))], pa.int32()),
    })


def _publish(out, run_id, shards, *, status="succeeded", files=None, lease=None, summary=None, reasons=()):
    return publish_snapshot(out, status=status, job_id="job-1", run_id=run_id, fingerprint=FP,
                            files=files or {s: out.part_path(run_id, s) for s in shards}, id_column="id",
                            id_type="string", summary=summary or {}, reasons=list(reasons), lease=lease)


def _tree(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_marker_lists_exactly_the_files_with_counts(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1", "2", "3"], {1: "too long"}))
    out.commit_part(run, "bb", _part(["4", "5"]))
    out.commit_part(run, "cc", _part(["6"]))  # committed, but not in this snapshot
    marker = _publish(out, run, ["aa", "bb"], summary={"rows": 999, "wall_s": 1.5, "model": "m"})
    assert marker["format"] == SNAPSHOT_FORMAT and marker["status"] == "succeeded" and marker["run_id"] == run
    assert [f["path"] for f in marker["files"]] == [f"data/{run}/part-aa.parquet", f"data/{run}/part-bb.parquet"]
    assert marker["files"][0] | {"bytes": 0} == {"path": f"data/{run}/part-aa.parquet", "shard_id": "aa", "rows": 3,
                                                  "error_rows": 1, "prompt_tokens": 30, "completion_tokens": 6,
                                                  "bytes": 0}
    assert marker["files"][0]["bytes"] == (tmp_path / "o" / marker["files"][0]["path"]).stat().st_size
    # whole-job counts come from the listed files, over the summary's; the rest of the summary stays
    counts = (marker["rows"], marker["error_rows"], marker["prompt_tokens"], marker["completion_tokens"])
    assert counts == (5, 1, 50, 12)
    assert marker["wall_s"] == 1.5 and marker["model"] == "m" and marker["fingerprint"] == FP
    assert json.loads((tmp_path / "o" / SUCCESS_FILE).read_text()) == marker
    assert out.snapshot() == marker and out.success() == marker
    assert sorted(out.read_snapshot(["id"]).column("id").to_pylist()) == ["1", "2", "3", "4", "5"]
    assert not out.has_part(run, "cc")  # unlisted: collected


def test_errors_dataset_lists_each_error_row(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1", "2", "3"], {0: "empty text", 2: "too long"}, kind="permanent"))
    out.commit_part(run, "bb", _part(["4", "5"], {1: "engine crashed"}, attempts=2))
    marker = _publish(out, run, ["aa", "bb"], status="partial", reasons=["error rate 0.60 above max_error_rate 0.0"])
    assert marker["errors_file"] == f"_errors/{marker['snapshot_id']}.parquet"
    errors = out.errors_table()
    assert errors.schema.names == ["id", "shard_id", "error", "error_kind", "attempts"]
    assert errors.to_pylist() == [
        {"id": "1", "shard_id": "aa", "error": "empty text", "error_kind": "permanent", "attempts": 1},
        {"id": "3", "shard_id": "aa", "error": "too long", "error_kind": "permanent", "attempts": 1},
        {"id": "5", "shard_id": "bb", "error": "engine crashed", "error_kind": "retriable", "attempts": 2},
    ]
    assert marker["reasons"] == ["error rate 0.60 above max_error_rate 0.0"]


def test_no_error_rows_no_errors_file(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    ids, no_errors = pa.array([1, 2], pa.int64()), pa.array([None, None], pa.string())
    out.commit_part(run, "aa", pa.table({"id": ids, "error": no_errors}))
    marker = publish_snapshot(out, status="succeeded", job_id="j", run_id=run, fingerprint=FP,
                              files={"aa": out.part_path(run, "aa")}, id_column="id", id_type="int64", summary={},
                              reasons=[])
    assert marker["errors_file"] is None and not (tmp_path / "o" / "_errors").exists()
    empty = out.errors_table()
    assert empty.num_rows == 0 and empty.schema.field("id").type == pa.int64()


def test_reading_before_any_publish_names_the_location(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    out.commit_part(new_run_id(), "aa", _part(["1"]))
    with pytest.raises(FileNotFoundError, match=f"no published snapshot.*{tmp_path}"):
        out.read_snapshot()
    with pytest.raises(FileNotFoundError, match="no published snapshot"):
        out.errors_table()


def test_overwrite_keeps_the_old_snapshot_until_the_new_one_is_published(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    old = new_run_id()
    out.commit_part(old, "aa", _part(["1", "2"]))
    _publish(out, old, ["aa"])
    new = out.prepare("overwrite", {**FP, "engine": "baseline"}).run_id
    out.commit_part(new, "bb", _part(["x", "y", "z"]))
    assert out.read_snapshot(["id"]).column("id").to_pylist() == ["1", "2"]  # the new run is not visible yet
    marker = _publish(out, new, ["bb"])
    assert out.read_snapshot(["id"]).column("id").to_pylist() == ["x", "y", "z"]
    assert marker["run_id"] == new and not out.has_part(old, "aa")  # the old run's part is collected


def test_publishing_twice_with_overlapping_shards_never_shows_duplicates(tmp_path):
    """A rewritten input gives new shard ids: the new snapshot lists only its own parts."""
    out = OutputLocation.at(str(tmp_path / "o"))
    first = new_run_id()
    out.commit_part(first, "aa", _part(["1", "2"]))
    out.commit_part(first, "bb", _part(["3", "4"]))
    _publish(out, first, ["aa", "bb"])
    second = new_run_id()
    out.commit_part(second, "cc", _part(["1", "2", "3"]))  # the same ids under new shard ids
    out.commit_part(second, "dd", _part(["4"]))
    marker = _publish(out, second, ["cc", "dd"])
    ids = out.read_snapshot(["id"]).column("id").to_pylist()
    assert sorted(ids) == ["1", "2", "3", "4"]
    assert {f["shard_id"] for f in marker["files"]} == {"cc", "dd"}
    assert [p for p in _tree(tmp_path / "o") if p.endswith(".parquet")] == [
        f"data/{second}/part-cc.parquet", f"data/{second}/part-dd.parquet"]


def test_retry_replaces_the_parts_it_rewrote(tmp_path):
    """retry_errors: a new run id, the affected shard written again whole; the marker lists the
    unaffected old part beside the new one, and the superseded part is collected."""
    out = OutputLocation.at(str(tmp_path / "o"))
    first = new_run_id()
    out.commit_part(first, "aa", _part(["1", "2"], {1: "engine crashed"}))
    out.commit_part(first, "bb", _part(["3"]))
    before = _publish(out, first, ["aa", "bb"], status="partial")
    assert before["error_rows"] == 1
    retry = out.prepare("retry_errors", FP)
    assert retry.previous == before
    out.commit_part(retry.run_id, "aa", _part(["1", "2"], attempts=2))
    files = {**out.snapshot_files(), "aa": out.part_path(retry.run_id, "aa")}
    marker = _publish(out, retry.run_id, [], files=files)
    assert out.snapshot_files() == {"aa": f"data/{retry.run_id}/part-aa.parquet", "bb": f"data/{first}/part-bb.parquet"}
    assert marker["error_rows"] == 0 and marker["errors_file"] is None
    assert not out.has_part(first, "aa") and out.has_part(first, "bb")
    assert not (tmp_path / "o" / PARTIAL_FILE).exists() and out.success() == marker
    assert not any(p.startswith("_errors/") for p in _tree(tmp_path / "o"))  # the old errors file too
    assert sorted(out.read_snapshot(["id"]).column("id").to_pylist()) == ["1", "2", "3"]


def test_partial_and_succeeded_markers_replace_each_other(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1"]))
    out.commit_part(run, "bb", _part(["2"]))
    _publish(out, run, ["aa", "bb"])
    partial = _publish(out, run, ["aa"], status="partial", reasons=["1 shard skipped"])
    assert not (tmp_path / "o" / SUCCESS_FILE).exists() and out.success() is None
    assert out.snapshot() == partial and partial["status"] == "partial"
    run2 = new_run_id()
    out.commit_part(run2, "bb", _part(["2"]))
    done = _publish(out, run2, ["bb"], files={"aa": out.part_path(run, "aa"), "bb": out.part_path(run2, "bb")})
    assert not (tmp_path / "o" / PARTIAL_FILE).exists() and out.snapshot() == done == out.success()


def test_gc_never_deletes_what_is_not_ours(tmp_path):
    """User files, the job's own input in the folder, foreign objects under data/ and _errors/,
    and names close to ours all survive; only our unlisted parts and error files go."""
    root = tmp_path / "o"
    out = OutputLocation.at(str(root))
    run, stale = new_run_id(), new_run_id()
    out.commit_part(run, "aa", _part(["1"], {0: "x"}))
    out.commit_part(stale, "bb", _part(["2"]))
    foreign = ["input.parquet", "notes.txt", "data/other.parquet", "data/my-run/part-aa.parquet",
               f"data/{run}/notes.parquet", f"data/{run}/part-AA.parquet", "_errors/mine.parquet",
               "reports/part-aa.parquet", "_SUCCESS.json.bak"]
    for name in foreign:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"theirs")
    marker = _publish(out, run, ["aa"])
    _publish(out, run, ["aa"])  # the previous errors file is collected, foreign ones stay
    assert _tree(root) == sorted([*foreign, SUCCESS_FILE, f"data/{run}/part-aa.parquet",
                                  out.snapshot()["errors_file"]])
    assert marker["errors_file"] != out.snapshot()["errors_file"]
    assert all((root / name).read_bytes() == b"theirs" for name in foreign)


def test_a_crash_before_gc_is_cleaned_by_the_next_publish(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    old, new = new_run_id(), new_run_id()
    out.commit_part(old, "aa", _part(["1"]))
    _publish(out, old, ["aa"])
    out.commit_part(new, "aa", _part(["1"]))
    # as if the new run's marker was written and the process died before collecting:
    marker = {**out.success(), "run_id": new, "files": [{"path": out.part_path(new, "aa"), "shard_id": "aa"}]}
    out.write_json(SUCCESS_FILE, marker)
    assert out.has_part(old, "aa")  # unlisted, still there
    assert collect_garbage(out, out.success()) == [f"data/{old}/part-aa.parquet"]
    assert not out.has_part(old, "aa") and out.read_snapshot().num_rows == 1


class _LostLease:
    def __init__(self):
        self.checks = 0

    def check(self):
        self.checks += 1
        raise LeaseLost("job job-1 lost the lease to job other")


def test_a_job_that_lost_its_lease_publishes_nothing(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    old, new = new_run_id(), new_run_id()
    out.commit_part(old, "aa", _part(["1"]))
    published = _publish(out, old, ["aa"])
    out.commit_part(new, "aa", _part(["9"], {0: "bad"}))
    lease = _LostLease()
    with pytest.raises(LeaseLost, match="lost the lease"):
        _publish(out, new, ["aa"], lease=lease)
    assert lease.checks == 1
    assert out.snapshot() == published and out.has_part(old, "aa") and out.has_part(new, "aa")


class _LeaseLostAfterThePut:
    def __init__(self):
        self.checks = 0

    def check(self):
        self.checks += 1
        if self.checks > 1:
            raise LeaseLost("lost between the marker and the collection")


def test_a_lease_lost_after_the_marker_leaves_the_collection_to_the_next_publish(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    old, new = new_run_id(), new_run_id()
    out.commit_part(old, "aa", _part(["1"]))
    _publish(out, old, ["aa"])
    out.commit_part(new, "aa", _part(["2"]))
    marker = _publish(out, new, ["aa"], lease=_LeaseLostAfterThePut())
    assert out.snapshot() == marker and out.has_part(old, "aa")  # published; nothing collected
    assert out.read_snapshot(["id"]).column("id").to_pylist() == ["2"]
    _publish(out, new, ["aa"])
    assert not out.has_part(old, "aa")


def test_a_listed_part_must_exist(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1"]))
    with pytest.raises(FileNotFoundError, match=f"part data/{run}/part-bb.parquet of shard bb does not exist"):
        _publish(out, run, ["aa", "bb"])
    assert out.snapshot() is None and out.has_part(run, "aa")


def test_files_must_name_parts_of_their_shard(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1"]))
    with pytest.raises(ValueError, match="the part of shard aa"):
        _publish(out, run, [], files={"bb": out.part_path(run, "aa")})
    with pytest.raises(ValueError, match="not an output part path"):
        _publish(out, run, [], files={"aa": "../elsewhere/part-aa.parquet"})
    with pytest.raises(ValueError, match="status"):
        _publish(out, run, ["aa"], status="failed")
    assert out.snapshot() is None


def test_part_metadata_and_errors_file_are_plain_parquet(tmp_path):
    """What DuckDB/Spark read: the listed paths, relative to the output."""
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa", _part(["1", "2"], {0: "x"}))
    marker = _publish(out, run, ["aa"])
    paths = [str(tmp_path / "o" / f["path"]) for f in json.loads((tmp_path / "o" / SUCCESS_FILE).read_text())["files"]]
    assert pq.read_table(paths).num_rows == 2
    assert pq.read_table(str(tmp_path / "o" / marker["errors_file"])).column("id").to_pylist() == ["1"]
