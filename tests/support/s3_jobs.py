"""Whole inference jobs on a two-node Ray cluster over S3 (a loopback server): the standard input
set and tiny model in a bucket (`data_bucket`), and the helpers that run a job and check its output
the way a user would. Shared by the S3 job tests and the chaos tests."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster import storage
from cluster.model_cache import download as model_download
from cluster.storage import s3
from jobs.manifest import parse_manifest
from tests.support.output_files import assert_each_id_once, marker, part_files, read_part
from tests.support.tiny_model import build_tiny_model

SMALL_FILES, SMALL_ROWS = 12, 20  # many small files: one shard each
LARGE_GROUPS, GROUP_ROWS = 12, 50  # one large file with many row groups
TOTAL_ROWS = SMALL_FILES * SMALL_ROWS + LARGE_GROUPS * GROUP_ROWS
TOTAL_SHARDS = SMALL_FILES + LARGE_GROUPS


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_bucket(moto_server):
    """A bucket holding the tiny model folder and the standard input set (written once)."""
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / "tiny", tokenizer="bpe")  # same model whatever is cached
        model_download.write_checksums(folder)
        for p in sorted(folder.iterdir()):
            s3.write_bytes(f"s3://{name}/models/tiny/{p.name}", p.read_bytes())
    fs, _ = storage.filesystem(f"s3://{name}")
    next_id = 0
    for i in range(SMALL_FILES):
        ids = list(range(next_id, next_id + SMALL_ROWS))
        next_id += SMALL_ROWS
        pq.write_table(rows(ids), f"{name}/in/small-{i:03d}.parquet", filesystem=fs)
    ids = list(range(next_id, next_id + LARGE_GROUPS * GROUP_ROWS))
    pq.write_table(rows(ids), f"{name}/in/large.parquet", filesystem=fs, row_group_size=GROUP_ROWS)
    return name


def rows(ids: list[int]) -> pa.Table:
    texts = [f"Package number {i} provides a small command line tool for managing files." for i in ids]
    return pa.table({"id": ids, "text": texts})


# ---- helpers -----------------------------------------------------------------------------


def job_manifest(bucket: str, out: str, **overrides):
    data = {
        "name": "chaos",
        "task": "summarize",
        "model": f"s3://{bucket}/models/tiny",
        "engine": "native",
        "input": {"uri": f"s3://{bucket}/in/", "rows_per_shard": GROUP_ROWS},
        "output": {"uri": out, "mode": "error_if_exists"},
        "params": {"max_new_tokens": 24},
        "resources": {"workers": 2, "cpus_per_worker": 1, "batch_size": 16},
        "max_shard_attempts": 3,
    }
    for key, value in overrides.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return parse_manifest(data)


def run_once(manifest, cluster):
    from jobs.run.inference import run_job  # the runner loads with the test that runs a job

    return run_job(manifest, job_id=f"t-{uuid.uuid4().hex[:8]}", ray_address=cluster.address)


class Background:
    """run_job in a thread, so the test can break things while it works."""

    def __init__(self, manifest, cluster):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._go, args=(manifest, cluster), daemon=True)
        self.thread.start()

    def _go(self, manifest, cluster):
        try:
            self.result = run_once(manifest, cluster)
        except BaseException as exc:  # re-raised in the test by join()
            self.error = exc

    def join(self, timeout: float = 240):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def parts(out: str) -> list[str]:
    """Every part file under the output's data/ (paths relative to it), listed by a marker or not."""
    return part_files(out)


def wait_for_parts(out: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(parts(out)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} parts were committed in {timeout}s"
        time.sleep(0.2)


def assert_mid_job(job: "Background", out: str) -> None:
    """The failure is injected while work remains, or the test would prove nothing."""
    assert job.thread.is_alive() and len(parts(out)) < TOTAL_SHARDS, "the job finished before the failure"


def output_ids(out: str) -> list[int]:
    """The ids of every part file present (what a reader listing the folder would see)."""
    ids: list[int] = []
    for path in parts(out):
        ids += read_part(out, path, ["id"]).column("id").to_pylist()
    return ids


def assert_every_id_once(out: str, expected: set[int]) -> None:
    """Each expected id exactly once in the files the published marker lists, and no other part
    file beside them (a reader of the folder sees the same rows as a reader of the marker)."""
    assert_each_id_once(out, expected)
    _, published = marker(out)
    assert parts(out) == sorted(f["path"] for f in published["files"]), "parts beside the published snapshot"


def success(out: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}/_SUCCESS.json"))


ALL_IDS = set(range(TOTAL_ROWS))


def committed_at(out: str, path: str) -> float:
    """When the part at `path` (relative to the output) was committed (its Parquet metadata)."""
    fs, full = storage.filesystem(f"{out}/{path}")
    return float(pq.read_schema(full, filesystem=fs).metadata[b"llmbatch.committed_at"])


def shard_of(path: str) -> str:
    """The shard id of a part path (data/<run_id>/part-<shard_id>.parquet)."""
    return path.rsplit("/part-", 1)[1][: -len(".parquet")]


def busy_inference_actors(cluster) -> list:
    """Inference actors running a shard right now: Ray titles an actor's process
    `ray::InferenceActor` when idle and `ray::InferenceActor.process` while it works."""
    found = []
    for p in cluster._ours():
        try:
            title = " ".join(p.cmdline())
        except Exception:  # exited meanwhile
            continue
        if title.startswith("ray::InferenceActor.process"):
            found.append(p)
    return found
