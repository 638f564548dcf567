"""The commit protocol of an OutputLocation on local paths: create-if-absent parts, output
modes (inference and training), totals."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest

from cluster import storage
from workers.output.location import MANIFEST_FILE, SUCCESS_FILE, OutputExistsError, OutputLocation, to_json
def _part(rows: int, errors: int = 0) -> pa.Table:
    return pa.table({
        "id": [str(i) for i in range(rows)], "summary": ["s"] * rows,
        "error": [("bad" if i < errors else None) for i in range(rows)],
        "prompt_tokens": pa.array([10] * rows, pa.int32()), "completion_tokens": pa.array([3] * rows, pa.int32()),
    })


def test_put_if_absent_commits_once_under_a_race(tmp_path):
    uri = str(tmp_path / "out" / "part-x.parquet")
    wins = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        if storage.put_if_absent(uri, f"attempt {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(wins) == 1
    assert storage.read_bytes(uri) == f"attempt {wins[0]}".encode()
    assert [n for n in storage.list_names(str(tmp_path / "out"))] == ["part-x.parquet"]  # no temp files left


def test_commit_part_and_totals(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    assert out.commit_part("aa11", _part(5, errors=2))
    assert not out.commit_part("aa11", _part(7))  # a second attempt loses, content unchanged
    assert out.commit_part("bb22", _part(3))
    assert out.committed_shards() == {"aa11", "bb22"}
    assert out.part_names() == ["part-aa11.parquet", "part-bb22.parquet"]
    totals = out.totals({"aa11", "bb22"})
    assert totals == {"rows": 8, "error_rows": 2, "prompt_tokens": 80, "completion_tokens": 24}
    assert out.read_parts(["id"]).num_rows == 8


def test_output_modes(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    key = {"task": "summarize"}
    assert out.prepare("error_if_exists", key) is None  # empty: fine
    out.write_manifest({"run_key": key})
    out.commit_part("aa11", _part(1))
    out.publish({"status": "succeeded"})
    with pytest.raises(OutputExistsError, match="already holds"):
        out.prepare("error_if_exists", key)
    assert out.prepare("resume", key) is None  # same job: parts kept, success marker withdrawn
    assert out.committed_shards() == {"aa11"}
    assert not storage.exists(out.path(SUCCESS_FILE)) and out.success() is None
    with pytest.raises(OutputExistsError, match="different job"):
        out.prepare("resume", {"task": "translate"})
    out.prepare("overwrite", {"task": "translate"})
    assert out.names() == []


def test_output_modes_of_an_all_or_nothing_output(tmp_path):
    """A training output counts once finished: an unfinished one is worked on in any mode."""
    out = OutputLocation.at(str(tmp_path / "model"))
    out.write_json("config.json", {"partial": True})
    assert out.prepare("error_if_exists", None, parts_resumable=False) is None
    out.publish({"job_id": "first"})
    with pytest.raises(OutputExistsError, match="already holds"):
        out.prepare("error_if_exists", None, parts_resumable=False)
    assert out.prepare("resume", None, parts_resumable=False) == {"job_id": "first"}  # done: nothing to do
    assert out.success() == {"job_id": "first"}
    assert out.prepare("overwrite", None, parts_resumable=False) is None
    assert out.names() == []


def test_write_json_replaces_whole(tmp_path):
    out = OutputLocation.at(str(tmp_path / "x"))
    out.write_json(SUCCESS_FILE, {"a": 1})
    out.write_json(SUCCESS_FILE, {"a": 2})
    assert json.loads(storage.read_bytes(out.path(SUCCESS_FILE))) == {"a": 2}
    assert storage.read_bytes(out.path(SUCCESS_FILE)) == to_json({"a": 2})
    assert out.read_json(MANIFEST_FILE) is None
