"""What an output location shows a pipeline after each way a run can end, on a real local Ray:
resume refused when the input or the engine changed (and overwrite then gives each id once, the
stale parts gone), one writer at a time, a failed overwrite keeping the old snapshot, every row an
error (failed, nothing published), error rows above max_error_rate (partial), and the deadline
(partial, with what finished published)."""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lifecycle import exit_code
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from tests.support.output_files import assert_each_id_once, marker, part_files, snapshot_ids

pytestmark = pytest.mark.integration


def write_input(path, ids, group=10, text="Package {} is a small tool that does one thing well."):
    texts = [text.format(i) if text else "" for i in ids]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=group)
    return path


def manifest(src, out, model, mode="error_if_exists", **extra):
    data = {"name": "outcomes", "task": "summarize", "model": str(model), "engine": "native",
            "input": {"uri": str(src)}, "output": {"uri": str(out), "mode": mode},
            "params": {"max_new_tokens": 4}, "resources": {"workers": 1, "batch_size": 8}}
    for key, value in extra.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    return parse_manifest(data)


def test_resume_after_the_input_was_rewritten_refuses_and_overwrite_starts_clean(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", [f"a{i}" for i in range(20)])
    out = tmp_path / "out"
    assert run_job(manifest(src, out, tiny_dir)).ok
    old_parts = part_files(out)
    new_ids = [f"b{i}" for i in range(30)]
    write_input(src, new_ids)  # rewritten in place: other rows, other shards
    resumed = run_job(manifest(src, out, tiny_dir, mode="resume"))
    assert resumed.status == "failed" and f"input file {src}" in resumed.error, resumed.error
    assert part_files(out) == old_parts and snapshot_ids(out) == [f"a{i}" for i in range(20)]  # untouched

    overwritten = run_job(manifest(src, out, tiny_dir, mode="overwrite"))
    assert overwritten.ok, overwritten.error
    assert_each_id_once(out, new_ids)
    _, published = marker(out)
    assert part_files(out) == sorted(f["path"] for f in published["files"])  # the stale parts are gone
    assert not set(old_parts) & set(part_files(out))


def test_resume_after_changing_the_engine_refuses(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", [f"e{i}" for i in range(6)])
    out = tmp_path / "out"
    assert run_job(manifest(src, out, tiny_dir, engine="baseline")).ok
    resumed = run_job(manifest(src, out, tiny_dir, mode="resume"))  # engine: native
    assert resumed.status == "failed" and "engine: baseline -> native" in resumed.error, resumed.error


def test_a_second_job_on_a_busy_output_is_refused_naming_the_first(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", [f"c{i}" for i in range(400)], group=4)
    out = tmp_path / "out"
    cancel, results = threading.Event(), {}
    slow = manifest(src, out, tiny_dir, params={"max_new_tokens": 64})
    first = threading.Thread(target=lambda: results.update(
        first=run_job(slow, job_id="first-writer", cancel=cancel)), daemon=True)
    first.start()
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("data/*/part-*.parquet")):  # the first job is writing
            assert time.monotonic() < deadline and first.is_alive(), results
            time.sleep(0.2)
        second = run_job(manifest(src, out, tiny_dir, mode="overwrite"), job_id="second-writer")
        assert second.status == "failed" and "being written by job first-writer" in second.error, second.error
    finally:
        cancel.set()
        first.join(120)
    assert results["first"].status == "cancelled" and marker(out) == (None, None)  # cancelled: nothing published


def test_failed_runs_publish_nothing_and_keep_the_old_snapshot(ray_local, tmp_path, tiny_dir):
    good = write_input(tmp_path / "good.parquet", [f"g{i}" for i in range(10)])
    empty = write_input(tmp_path / "empty.parquet", [f"x{i}" for i in range(10)], text="")
    out = tmp_path / "out"
    assert run_job(manifest(good, out, tiny_dir)).ok
    before = (out / "_SUCCESS.json").read_bytes()
    old_parts = part_files(out)

    every_row_an_error = run_job(manifest(empty, out, tiny_dir, mode="overwrite", max_error_rate=1.0))
    assert every_row_an_error.status == "failed" and exit_code(every_row_an_error.status) == 1
    assert "every row is an error" in every_row_an_error.error
    assert (out / "_SUCCESS.json").read_bytes() == before and not (out / "_PARTIAL.json").exists()
    assert set(old_parts) <= set(part_files(out))  # the old snapshot's files are still there
    assert_each_id_once(out, [f"g{i}" for i in range(10)])

    fresh = run_job(manifest(empty, tmp_path / "fresh", tiny_dir))
    assert fresh.status == "failed" and marker(tmp_path / "fresh") == (None, None)


def test_error_rows_above_max_error_rate_are_partial(ray_local, tmp_path, tiny_dir):
    src = tmp_path / "in.parquet"
    texts = ["A small tool."] * 9 + [""]
    pq.write_table(pa.table({"id": list(range(10)), "text": texts}), src)
    result = run_job(manifest(src, tmp_path / "out", tiny_dir, max_error_rate=0.05))
    assert result.status == "partial" and exit_code(result.status) == 3
    assert result.summary["reasons"] == ["error rows 1/10 (10%) above max_error_rate 5%"]
    name, published = marker(tmp_path / "out")
    assert name == "_PARTIAL.json" and published["reasons"] == result.summary["reasons"]
    assert published["error_rows"] == 1 and published["errors_file"]
    assert_each_id_once(tmp_path / "out", range(10))
    assert run_job(manifest(src, tmp_path / "ok", tiny_dir, max_error_rate=0.1)).status == "succeeded"


def test_the_deadline_publishes_what_finished_as_partial(ray_local, tmp_path, tiny_dir):
    ids = [f"t{i}" for i in range(4000)]  # ~800k tokens to generate: far more than 30 s of work
    src = write_input(tmp_path / "in.parquet", ids, group=10)
    out = tmp_path / "out"
    result = run_job(manifest(src, out, tiny_dir, timeout_s=30, params={"max_new_tokens": 200},
                              resources={"batch_size": 10}))
    assert result.status == "partial", result.error
    assert result.summary["timed_out"] and "deadline reached (timeout_s: 30)" in result.summary["reasons"][0]
    name, published = marker(out)
    assert name == "_PARTIAL.json" and 0 < published["rows"] < len(ids)
    got = snapshot_ids(out)
    assert len(got) == len(set(got)) == published["rows"] and set(got) <= set(ids)
    assert part_files(out) == sorted(f["path"] for f in published["files"])
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == published["run_id"]
