"""The commit protocol of an OutputLocation on local paths: create-if-absent parts in a run's
folder, output modes (inference: nothing deleted; training: only its own marker), JSON files."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from workers.output.layout import new_run_id
from workers.output.location import MANIFEST_FILE, SUCCESS_FILE, OutputExistsError, OutputLocation, to_json
from workers.output.snapshot import publish_snapshot


def _part(rows: int, errors: int = 0) -> pa.Table:
    return pa.table({
        "id": [str(i) for i in range(rows)], "summary": ["s"] * rows,
        "error": [("bad" if i < errors else None) for i in range(rows)],
        "prompt_tokens": pa.array([10] * rows, pa.int32()), "completion_tokens": pa.array([3] * rows, pa.int32()),
    })


FP = {"input": [{"uri": "/in/a.parquet", "size": 10, "version": "1"}], "engine": "native",
      "task": {"kind": "summarize"}}


def _publish(out: OutputLocation, run_id: str, shards: list[str], fp: dict = FP, status: str = "succeeded") -> dict:
    return publish_snapshot(out, status=status, job_id="j", run_id=run_id, fingerprint=fp,
                            files={s: out.part_path(run_id, s) for s in shards}, id_column="id", id_type="string",
                            summary={}, reasons=[])


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


def test_commit_part_goes_to_the_run_folder_once(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    assert out.commit_part(run, "aa11", _part(5, errors=2))
    assert not out.commit_part(run, "aa11", _part(7))  # a second attempt loses, content unchanged
    assert out.commit_part(run, "bb22", _part(3))
    assert out.committed_shards(run) == {"aa11", "bb22"}
    assert out.committed_shards(new_run_id()) == set()
    assert out.part_path(run, "aa11") == f"data/{run}/part-aa11.parquet"
    assert out.has_part(run, "aa11") and not out.has_part(run, "cc33")
    assert out.read_part_at(out.part_path(run, "aa11"), ["id"]).num_rows == 5
    meta = pq.read_schema(out.part_uri(run, "aa11")).metadata
    assert meta[b"llmbatch.shard_id"] == b"aa11" and meta[b"llmbatch.run_id"] == run.encode()


def test_layout_names_are_checked(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    with pytest.raises(ValueError, match="run_id"):
        out.part_path("../../etc", "aa11")
    with pytest.raises(ValueError, match="shard_id"):
        out.part_path(new_run_id(), "AA/11")
    with pytest.raises(ValueError, match="not an output part path"):
        out.read_part_at("../secret.parquet")


def test_error_if_exists_refuses_any_object_but_a_lease(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    slot = out.prepare("error_if_exists", FP)
    assert not slot.resumed and slot.committed == frozenset() and slot.previous is None
    storage.write_bytes(out.path("_lease/000000000001.json"), b"{}")
    assert out.prepare("error_if_exists", FP).run_id != slot.run_id  # a lease alone is not content
    storage.write_bytes(out.path("deep/down/notes.txt"), b"mine")
    with pytest.raises(OutputExistsError, match="already holds 1 object.*deep"):
        out.prepare("error_if_exists", FP)


def test_resume_continues_the_same_run_and_deletes_nothing(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    assert not out.prepare("resume", FP).resumed  # nothing started here: a fresh run
    run = new_run_id()
    out.write_manifest({"run_id": run, "fingerprint": FP})
    out.commit_part(run, "aa11", _part(1))
    marker = _publish(out, run, ["aa11"])
    slot = out.prepare("resume", json.loads(json.dumps(FP)))
    assert slot.run_id == run and slot.resumed and slot.committed == {"aa11"}
    assert slot.previous == marker
    assert out.success() == marker and out.has_part(run, "aa11")  # resume withdraws nothing


def test_resume_with_a_changed_fingerprint_refuses_and_names_the_change(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.write_manifest({"run_id": run, "fingerprint": FP})
    changed = {**FP, "engine": "baseline", "input": [{"uri": "/in/a.parquet", "size": 12, "version": "2"}]}
    with pytest.raises(OutputExistsError) as err:
        out.prepare("resume", changed)
    message = str(err.value)
    assert "engine: native -> baseline" in message and "input file /in/a.parquet: size 10 -> 12" in message
    assert "overwrite" in message
    out.write_manifest({"job_id": "old", "run_key": {}})  # the layout before fingerprints
    with pytest.raises(OutputExistsError, match="older llmbatch"):
        out.prepare("resume", FP)


def test_overwrite_starts_a_new_run_and_keeps_the_published_one(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    run = new_run_id()
    out.commit_part(run, "aa11", _part(2))
    marker = _publish(out, run, ["aa11"])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    slot = out.prepare("overwrite", {**FP, "engine": "baseline"})
    assert slot.run_id != run and not slot.resumed and slot.committed == frozenset() and slot.previous == marker
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert out.read_snapshot(["id"]).num_rows == 2


def test_retry_errors_needs_a_published_snapshot_of_the_same_run(tmp_path):
    out = OutputLocation.at(str(tmp_path / "o"))
    with pytest.raises(OutputExistsError, match="no published snapshot"):
        out.prepare("retry_errors", FP)
    run = new_run_id()
    out.commit_part(run, "aa11", _part(3, errors=1))
    marker = _publish(out, run, ["aa11"], status="partial")
    slot = out.prepare("retry_errors", FP)
    assert slot.run_id != run and slot.previous == marker and not slot.resumed
    with pytest.raises(OutputExistsError, match="task.kind: summarize -> translate"):
        out.prepare("retry_errors", {**FP, "task": {"kind": "translate"}})


def test_output_modes_of_a_model_folder(tmp_path):
    """A training output counts once finished; overwrite withdraws only its marker, then the
    export replaces the model's files by name."""
    out = OutputLocation.at(str(tmp_path / "model"))
    out.write_json("config.json", {"partial": True})
    assert out.prepare_model_output("error_if_exists") is None
    out.publish_model({"job_id": "first"})
    with pytest.raises(OutputExistsError, match="already holds a trained model"):
        out.prepare_model_output("error_if_exists")
    assert out.prepare_model_output("resume") == {"job_id": "first"}  # done: nothing to do
    assert out.success() == {"job_id": "first"}
    (tmp_path / "model" / "notes.txt").write_text("the user's")
    assert out.prepare_model_output("overwrite") is None
    assert out.names() == ["config.json", "notes.txt"]
    with pytest.raises(OutputExistsError, match="inference outputs"):
        out.prepare_model_output("retry_errors")


def test_write_json_replaces_whole(tmp_path):
    out = OutputLocation.at(str(tmp_path / "x"))
    out.write_json(SUCCESS_FILE, {"a": 1})
    out.write_json(SUCCESS_FILE, {"a": 2})
    assert json.loads(storage.read_bytes(out.path(SUCCESS_FILE))) == {"a": 2}
    assert storage.read_bytes(out.path(SUCCESS_FILE)) == to_json({"a": 2})
    assert out.read_json(MANIFEST_FILE) is None
    with pytest.raises(ValueError, match="not a marker"):
        out.withdraw_marker(MANIFEST_FILE)


def test_location_pickles_for_actors(tmp_path):
    import pickle

    out = OutputLocation.at(str(tmp_path / "x"))
    assert pickle.loads(pickle.dumps(out)) == out
