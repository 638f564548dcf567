"""`retry_errors` / `llmbatch retry` on a real local Ray: only the failed rows of the published
snapshot are redone; the output then has each id once, new results in place of the errors, in a
new snapshot; the superseded parts are garbage-collected, the untouched parts kept as they were.

The errors are injected the way an engine failure leaves them: a published snapshot one of whose
parts holds rows with `error_kind: retriable` (and one permanent), published with the library's
own commit and publish, under the run's real fingerprint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from tests.support.output_files import assert_each_id_once, errors_files, marker, part_files, read_part, snapshot_table
from tests.support.paths import REPO
from workers.output.layout import new_run_id
from workers.output.location import OutputLocation
from workers.output.snapshot import publish_snapshot

pytestmark = pytest.mark.integration

IDS = [f"doc-{i}" for i in range(30)]
RETRIABLE_ROWS, PERMANENT_ROW = [0, 1, 2], 3


def manifest(src, out, model, mode="error_if_exists"):
    return parse_manifest({
        "name": "retry", "task": "summarize", "model": str(model), "engine": "native",
        "input": {"uri": str(src)}, "output": {"uri": str(out), "mode": mode},
        "params": {"max_new_tokens": 4}, "resources": {"workers": 1, "batch_size": 8},
    })


def inject_errors(out) -> tuple[str, list[str], dict]:
    """Republish the snapshot with rows of its first part turned into errors; (that part's path,
    the ids made retriable errors, the marker published)."""
    location = OutputLocation.at(str(out))
    _, published = marker(out)
    entry = published["files"][0]
    part = read_part(out, entry["path"])
    errors = [None] * part.num_rows
    kinds = [None] * part.num_rows
    for i in RETRIABLE_ROWS:
        errors[i], kinds[i] = "engine error: CUDA out of memory (injected)", "retriable"
    errors[PERMANENT_ROW], kinds[PERMANENT_ROW] = "input too long (injected)", "permanent"
    broken = part.set_column(part.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
    broken = broken.set_column(broken.schema.get_field_index("error_kind"), "error_kind", pa.array(kinds, pa.string()))
    outputs = [None if e else o for e, o in zip(errors, part.column("summary").to_pylist())]
    broken = broken.set_column(broken.schema.get_field_index("summary"), "summary", pa.array(outputs, pa.string()))
    run_id = new_run_id()
    assert location.commit_part(run_id, entry["shard_id"], broken)
    files = {f["shard_id"]: f["path"] for f in published["files"]}
    files[entry["shard_id"]] = location.part_path(run_id, entry["shard_id"])
    injected = publish_snapshot(location, status="partial", job_id="injected", run_id=run_id,
                                fingerprint=published["fingerprint"], files=files, id_column="id",
                                id_type=published["id_type"], summary={}, reasons=["injected errors"])
    failed_ids = [part.column("id")[i].as_py() for i in RETRIABLE_ROWS]
    return files[entry["shard_id"]], failed_ids, injected


def test_retry_errors_redoes_only_the_failed_rows(ray_local, tmp_path, tiny_dir):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": IDS, "text": [f"Document {i} describes a small tool." for i in range(30)]}),
                   src, row_group_size=10)
    out = tmp_path / "out"
    first = run_job(manifest(src, out, tiny_dir), job_id="first")
    assert first.ok, first.error
    injected_part, failed_ids, injected = inject_errors(out)
    kept_before = sorted(f["path"] for f in injected["files"] if f["path"] != injected_part)
    assert injected["error_rows"] == 4 and len(errors_files(out)) == 1

    retried = run_job(manifest(src, out, tiny_dir, mode="retry_errors"), job_id="retry-1")
    # The permanent error is left alone by default: one error row remains, above max_error_rate 0.
    assert retried.status == "partial", retried.error
    assert retried.summary["retried_rows"] == 3 and "max_error_rate" in retried.summary["reasons"][0]
    name, published = marker(out)
    assert name == "_PARTIAL.json" and published["snapshot_id"] != injected["snapshot_id"]
    assert_each_id_once(out, IDS)
    rows = {r["id"]: r for r in snapshot_table(out).to_pylist()}
    for i in failed_ids:
        assert rows[i]["error"] is None and rows[i]["summary"] and rows[i]["attempts"] == 2, rows[i]
    permanent = [r for r in rows.values() if r["error"]]
    assert [(r["error_kind"], r["attempts"]) for r in permanent] == [("permanent", 1)]
    # The untouched parts are listed again as they were; the injected part is superseded and gone.
    new_paths = sorted(f["path"] for f in published["files"])
    assert set(kept_before) <= set(new_paths) and injected_part not in new_paths
    assert part_files(out) == new_paths, "a superseded part was left beside the snapshot"
    errors = pq.read_table(str(out / published["errors_file"]))
    assert errors.num_rows == 1 and errors.column("error_kind").to_pylist() == ["permanent"]
    assert errors_files(out) == [published["errors_file"]]

    # `llmbatch retry OUTPUT --all` (the manifest comes back from _manifest.json) redoes the permanent one too.
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMBATCH_LOG_FORMAT": "json"}
    cli = subprocess.run([sys.executable, "-m", "jobs.cli.main", "retry", str(out), "--all", "--no-progress",
                          "--ray-address", address], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    name, final = marker(out)
    assert name == "_SUCCESS.json" and final["status"] == "succeeded" and final["error_rows"] == 0
    assert not (out / "_PARTIAL.json").exists() and final["errors_file"] is None
    assert_each_id_once(out, IDS)
    table = snapshot_table(out)
    assert table.column("error").null_count == table.num_rows
    assert pc.max(table.column("attempts")).as_py() == 2
    assert part_files(out) == sorted(f["path"] for f in final["files"]) and errors_files(out) == []


def test_retry_needs_a_snapshot_of_the_same_run(ray_local, tmp_path, tiny_dir):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": IDS[:4], "text": ["a small tool"] * 4}), src)
    nothing = run_job(manifest(src, tmp_path / "none", tiny_dir, mode="retry_errors"))
    assert nothing.status == "failed" and "no published snapshot" in nothing.error
    out = tmp_path / "out"
    assert run_job(manifest(src, out, tiny_dir)).ok
    changed = manifest(src, out, tiny_dir, mode="retry_errors").model_copy(update={"engine": "hf"})
    refused = run_job(changed)
    assert refused.status == "failed" and "engine: native -> hf" in refused.error
