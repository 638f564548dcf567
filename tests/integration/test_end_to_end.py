"""End-to-end jobs on a real local Ray: the built-in model, resume, kill -9, failing shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from tests.support.output_files import MANIFEST, marker, part_files, read_json, snapshot_ids, snapshot_table
from tests.support.paths import REPO

pytestmark = pytest.mark.integration


def write_input(path: Path, rows: int, group: int, start: int = 0) -> Path:
    ids = [f"pkg-{i}" for i in range(start, start + rows)]
    texts = [f"Package {i} is a small tool that does one thing well." for i in range(start, start + rows)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=group, compression="none")
    return path


def manifest(input_uri, output_uri, model, mode="error_if_exists", **extra):
    data = {
        "name": "e2e", "task": "summarize", "model": str(model),
        "input": {"uri": str(input_uri)}, "output": {"uri": str(output_uri), "mode": mode},
        "params": {"max_new_tokens": 8}, "resources": {"workers": 2, "cpus_per_worker": 1, "batch_size": 8},
    }
    data.update(extra)
    return parse_manifest(data)


def output_ids(out: Path) -> list[str]:
    return snapshot_ids(out)


def parts(out: Path) -> dict[str, tuple[int, int]]:
    """Every part file of every run (data/<run_id>/part-*.parquet): name -> (inode, mtime)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("data/*/part-*.parquet")}


def test_builtin_model_summarizes_real_rows(ray_local, tmp_path, example_data, builtin_model_dir):
    rows = pq.read_table(example_data).slice(0, 6)
    src = tmp_path / "six.parquet"
    pq.write_table(rows, src, row_group_size=3)
    m = manifest(src, tmp_path / "out", "builtin:smollm2-135m-instruct", params={"max_new_tokens": 32})
    result = run_job(m, job_id="e2e-builtin")
    assert result.ok, result.error
    table = snapshot_table(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == sorted(rows.column("id").to_pylist())
    assert set(table.schema.names) >= {"id", "summary", "error", "error_kind", "attempts", "finish_reason",
                                       "prompt_tokens", "completion_tokens"}
    for row in table.to_pylist():
        assert row["error"] is None, row
        assert row["summary"] and row["summary"].isascii() and len(row["summary"].split()) >= 3, row
    success = json.loads((tmp_path / "out" / "_SUCCESS.json").read_text())
    assert success["rows"] == 6 and success["error_rows"] == 0 and success["shards_total"] == 2
    assert success["status"] == "succeeded" and success["format"] == "llmbatch.snapshot/1"
    manifest_file = read_json(tmp_path / "out", MANIFEST)
    assert manifest_file["run_id"] == success["run_id"] and manifest_file["fingerprint"] == success["fingerprint"]
    assert sorted(f["path"] for f in success["files"]) == part_files(tmp_path / "out")


def test_resume_skips_committed_shards(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", rows=40, group=10)
    out = tmp_path / "out"
    assert run_job(manifest(src, out, tiny_dir)).ok
    first = parts(out)
    assert len(first) == 4
    lost = sorted(first)[:2]
    # As if the run had crashed before these two were committed, and so before it published.
    (out / "_SUCCESS.json").unlink()
    for path in out.glob("data/*/part-*.parquet"):
        if path.name in lost:
            path.unlink()
    result = run_job(manifest(src, out, tiny_dir, mode="resume"))
    assert result.ok, result.error
    assert result.summary["shards_skipped"] == 2 and result.summary["shards_committed"] == 2
    second = parts(out)
    for name in set(first) - set(lost):
        assert second[name] == first[name], "a committed shard was rewritten"
    assert sorted(output_ids(out)) == sorted(f"pkg-{i}" for i in range(40))
    assert result.summary["rows"] == 40  # whole-job totals, including resumed shards


def test_error_if_exists_refuses_a_second_run(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", rows=4, group=4)
    assert run_job(manifest(src, tmp_path / "out", tiny_dir)).ok
    again = run_job(manifest(src, tmp_path / "out", tiny_dir))
    assert again.status == "failed" and "already holds" in again.error and again.summary.get("refused")


def test_bad_rows_are_recorded_as_permanent_errors(ray_local, tmp_path, tiny_dir):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "text": ["fine text", None, "", "word " * 3000]}), src)
    result = run_job(manifest(src, tmp_path / "out", tiny_dir, max_error_rate=0.75,
                              params={"max_new_tokens": 4, "max_input_tokens": 256, "on_long_input": "error"}))
    assert result.ok, result.error  # 3 of 4 rows are errors: within max_error_rate 0.75
    rows = {r["id"]: r for r in snapshot_table(tmp_path / "out").to_pylist()}
    assert rows["b"]["error"] == "text is null" and rows["c"]["error"] == "text is empty"
    assert rows["d"]["error"].startswith("input too long")
    assert {rows[i]["error_kind"] for i in "bcd"} == {"permanent"} and rows["a"]["error_kind"] is None
    assert {r["attempts"] for r in rows.values()} == {1}
    assert result.summary["error_rows"] == 3


def test_several_completions_per_row_are_lists_the_same_in_any_shard_layout(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", rows=12, group=4)
    params = {"max_new_tokens": 5, "n": 2, "temperature": 1.0, "seed": 3}
    assert run_job(manifest(src, tmp_path / "a", tiny_dir, params=params)).ok
    other = manifest(src, tmp_path / "b", tiny_dir, params=params,
                     input={"uri": str(src), "rows_per_shard": 3}, resources={"workers": 1, "batch_size": 5})
    result = run_job(other)
    assert result.ok, result.error
    a, b = ({r["id"]: r for r in snapshot_table(tmp_path / out).to_pylist()} for out in ("a", "b"))
    assert sorted(a) == sorted(b) and len(a) == 12
    for row_id, row in a.items():
        assert row["error"] is None, row
        assert len(row["summary"]) == 2 and len(row["finish_reason"]) == 2 and len(row["completion_tokens"]) == 2
        assert row["summary"] == b[row_id]["summary"]  # 3 shards of 4 rows or 4 of 3: the same draws
    assert result.summary["completion_tokens"] == sum(sum(r["completion_tokens"]) for r in b.values())
    assert read_json(tmp_path / "b", MANIFEST)["fingerprint"]["params"]["n"] == 2


def _corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite the first data page header of one row group: its footer stays readable, so the
    job plans fine, but every attempt to read that shard fails."""
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(group).column(1)
    offset = col.dictionary_page_offset or col.data_page_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 24)


def test_failing_shard_fails_the_job_or_is_skipped(ray_local, tmp_path, tiny_dir):
    src = write_input(tmp_path / "in.parquet", rows=30, group=10)
    _corrupt_row_group(src, 1)
    failed = run_job(manifest(src, tmp_path / "a", tiny_dir, max_shard_attempts=2))
    assert failed.status == "failed" and "after 2 attempt(s)" in failed.error
    assert marker(tmp_path / "a") == (None, None)  # nothing published

    skipped = run_job(manifest(src, tmp_path / "b", tiny_dir, max_shard_attempts=2, on_shard_failure="skip"))
    assert skipped.status == "partial", skipped.error  # a pipeline waiting for _SUCCESS.json is not fooled
    assert not (tmp_path / "b" / "_SUCCESS.json").exists()
    name, published = marker(tmp_path / "b")
    assert name == "_PARTIAL.json" and published["status"] == "partial"
    assert len(published["skipped_failed_shards"]) == 1 and "skipped" in published["reasons"][0]
    assert skipped.summary["reasons"] == published["reasons"]
    assert sorted(output_ids(tmp_path / "b")) == sorted([f"pkg-{i}" for i in range(10)] +
                                                        [f"pkg-{i}" for i in range(20, 30)])


@pytest.mark.slow
def test_kill_9_then_resume_redoes_nothing(tmp_path, tiny_dir):
    """`kill -9` of `llmbatch run` midway; the same command with resume completes the job."""
    src = write_input(tmp_path / "in.parquet", rows=160, group=10)
    out = tmp_path / "out"
    spec = {"version": 1, "name": "crash", "task": "summarize", "model": str(tiny_dir),
            "input": {"uri": str(src)}, "output": {"uri": str(out), "mode": "error_if_exists"},
            "params": {"max_new_tokens": 96}, "resources": {"workers": 1, "batch_size": 4}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "jobs.cli.main", "run", str(path), "--no-progress"]
    env = {**os.environ, "LLMBATCH_LOG_FORMAT": "json", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(parts(out)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the job ended before it could be killed"
        assert len(parts(out)) >= 3, "no progress within 240 s"
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies at once, mid-shard
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # and the local Ray it started, as after a machine crash
        except ProcessLookupError:
            pass
    time.sleep(3)  # Ray workers notice their raylet is gone and exit; an in-flight put may land first
    before = parts(out)
    assert 3 <= len(before) < 16
    resumed = subprocess.run(cmd + ["--output-mode", "resume"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = parts(out)
    assert len(after) == 16
    for name, stamp in before.items():
        assert after[name] == stamp, f"{name} was recomputed"
    ids = output_ids(out)
    assert len(ids) == 160 and len(set(ids)) == 160
    resume_logs = [json.loads(line) for line in resumed.stderr.splitlines()
                   if line.startswith("{") and '"job.resume"' in line]
    assert resume_logs and resume_logs[0]["skipped_shards"] == len(before)
    assert sorted(resume_logs[0]["shard_ids"]) == sorted(n[5:-8] for n in before)
    assert sorted(f["path"].rsplit("/", 1)[1] for f in marker(out)[1]["files"]) == sorted(after)
