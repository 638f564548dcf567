"""The commit protocol on local paths: create-if-absent parts, output modes, totals."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest

from cluster import storage
from workers.output import commit
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
    out = str(tmp_path / "o")
    assert commit.commit_part(out, "aa11", _part(5, errors=2))
    assert not commit.commit_part(out, "aa11", _part(7))  # a second attempt loses, content unchanged
    assert commit.commit_part(out, "bb22", _part(3))
    assert commit.committed_shards(out) == {"aa11", "bb22"}
    totals = commit.output_totals(out, {"aa11", "bb22"})
    assert totals == {"rows": 8, "error_rows": 2, "prompt_tokens": 80, "completion_tokens": 24}


def test_output_modes(tmp_path):
    out = str(tmp_path / "o")
    key = {"task": "summarize"}
    commit.prepare_output(out, "error_if_exists", key)  # empty: fine
    commit.write_json(storage.join(out, commit.MANIFEST_FILE), {"run_key": key})
    commit.commit_part(out, "aa11", _part(1))
    commit.write_json(storage.join(out, commit.SUCCESS_FILE), {"status": "succeeded"})
    with pytest.raises(commit.OutputExistsError, match="already holds"):
        commit.prepare_output(out, "error_if_exists", key)
    commit.prepare_output(out, "resume", key)  # same job: parts kept, success marker withdrawn
    assert commit.committed_shards(out) == {"aa11"}
    assert not storage.exists(storage.join(out, commit.SUCCESS_FILE))
    with pytest.raises(commit.OutputExistsError, match="different job"):
        commit.prepare_output(out, "resume", {"task": "translate"})
    commit.prepare_output(out, "overwrite", {"task": "translate"})
    assert storage.list_names(out) == []


def test_write_json_replaces_whole(tmp_path):
    uri = str(tmp_path / "x" / "_SUCCESS.json")
    commit.write_json(uri, {"a": 1})
    commit.write_json(uri, {"a": 2})
    assert json.loads(storage.read_bytes(uri)) == {"a": 2}
