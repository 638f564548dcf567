"""Whole inference jobs on a two-node Ray cluster reading and writing S3 (a loopback server),
with failures injected mid-job: an actor killed, a node killed, the S3 server stopped for 20 s,
a shard that can never be read. Every test checks the output the way a user would: the union of
the committed parts holds every input id exactly once.
"""

from __future__ import annotations

import json
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from cluster import storage
from cluster.model_cache import download as model_download
from cluster.storage import s3
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from tests.support.tiny_model import build_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.s3, pytest.mark.chaos]

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
        pq.write_table(_rows(ids), f"{name}/in/small-{i:03d}.parquet", filesystem=fs)
    ids = list(range(next_id, next_id + LARGE_GROUPS * GROUP_ROWS))
    pq.write_table(_rows(ids), f"{name}/in/large.parquet", filesystem=fs, row_group_size=GROUP_ROWS)
    return name


def _rows(ids: list[int]) -> pa.Table:
    texts = [f"Package number {i} provides a small command line tool for managing files." for i in ids]
    return pa.table({"id": ids, "text": texts})


# ---- helpers -----------------------------------------------------------------------------


def _manifest(bucket: str, out: str, **overrides):
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


def _run(manifest, cluster):
    return run_job(manifest, job_id=f"t-{uuid.uuid4().hex[:8]}", ray_address=cluster.address)


class _Background:
    """run_job in a thread, so the test can break things while it works."""

    def __init__(self, manifest, cluster):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._go, args=(manifest, cluster), daemon=True)
        self.thread.start()

    def _go(self, manifest, cluster):
        try:
            self.result = _run(manifest, cluster)
        except BaseException as exc:  # re-raised in the test by join()
            self.error = exc

    def join(self, timeout: float = 240):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the job did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


def _parts(out: str) -> list[str]:
    return [n for n in storage.list_names(out) if n.startswith("part-")]


def _wait_for_parts(out: str, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(_parts(out)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} parts were committed in {timeout}s"
        time.sleep(0.2)


def _assert_mid_job(job: "_Background", out: str) -> None:
    """The failure is injected while work remains, or the test would prove nothing."""
    assert job.thread.is_alive() and len(_parts(out)) < TOTAL_SHARDS, "the job finished before the failure"


def _output_ids(out: str) -> list[int]:
    fs, _ = storage.filesystem(out)
    ids: list[int] = []
    for name in _parts(out):
        ids += pq.read_table(storage.filesystem(f"{out}/{name}")[1], filesystem=fs).column("id").to_pylist()
    return ids


def _assert_every_id_once(out: str, expected: set[int]) -> None:
    ids = _output_ids(out)
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"ids committed more than once: {dupes[:20]}"
    assert set(ids) == expected, f"missing: {sorted(expected - set(ids))[:20]}, extra: {sorted(set(ids) - expected)[:20]}"


def _success(out: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}/_SUCCESS.json"))


ALL_IDS = set(range(TOTAL_ROWS))


def _committed_at(out: str, name: str) -> float:
    fs, path = storage.filesystem(f"{out}/{name}")
    return float(pq.read_schema(path, filesystem=fs).metadata[b"llmbatch.committed_at"])


def _busy_inference_actors(cluster) -> list:
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


# ---- end to end on S3 --------------------------------------------------------------------


def test_s3_job_commits_every_row_once(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/e2e"
    result = _run(_manifest(data_bucket, out), two_node_cluster)
    assert result.status == "succeeded", result.error
    _assert_every_id_once(out, ALL_IDS)
    # _manifest.json first, every part in between, _SUCCESS.json last.
    created = json_at(out, "_manifest.json")["created_at"]
    finished = _success(out)["finished_at"]
    assert all(created <= _committed_at(out, n) <= finished for n in _parts(out))
    assert _success(out)["rows"] == TOTAL_ROWS
    # The model folder came from S3 once into each node's own cache.
    for node, cache in two_node_cluster.cache_dirs.items():
        assert list((cache / "models" / "s3").glob("*/model.safetensors")), f"no model in {node}'s cache"


@pytest.mark.parametrize("where", ["s3", "local"])
def test_output_modes_behave_the_same_on_s3_and_local(two_node_cluster, data_bucket, tmp_path, where):
    out = f"s3://{data_bucket}/out/modes" if where == "s3" else str(tmp_path / "out")
    small = {"uri": f"s3://{data_bucket}/in/small-00*.parquet"}  # 10 files: 10 shards
    expected = set(range(10 * SMALL_ROWS))
    first = _run(_manifest(data_bucket, out, input=small), two_node_cluster)
    assert first.status == "succeeded", first.error
    _assert_every_id_once(out, expected)

    again = _run(_manifest(data_bucket, out, input=small), two_node_cluster)
    assert again.status == "failed" and "already holds" in again.error
    storage.delete(f"{out}/{_parts(out)[0]}")  # as if the first run had died before this shard
    resumed = _run(_manifest(data_bucket, out, input=small, output={"mode": "resume"}), two_node_cluster)
    assert resumed.status == "succeeded", resumed.error
    assert (resumed.summary["shards_skipped"], resumed.summary["shards_committed"]) == (9, 1)
    _assert_every_id_once(out, expected)
    overwritten = _run(_manifest(data_bucket, out, input=small, output={"mode": "overwrite"}), two_node_cluster)
    assert overwritten.status == "succeeded", overwritten.error
    assert overwritten.summary["shards_committed"] == 10
    _assert_every_id_once(out, expected)


def json_at(out: str, name: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}/{name}"))


def test_bad_schema_is_one_clear_error_before_any_work(moto_server, data_bucket):
    fs, _ = storage.filesystem(f"s3://{data_bucket}")
    pq.write_table(_rows([1, 2]), f"{data_bucket}/bad/ok.parquet", filesystem=fs)
    pq.write_table(pa.table({"id": [3], "body": ["x"]}), f"{data_bucket}/bad/no-text.parquet", filesystem=fs)
    out = f"s3://{data_bucket}/out/bad"
    result = run_job(_manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/bad/"}), job_id="bad-schema")
    assert result.status == "failed"
    assert f"s3://{data_bucket}/bad/no-text.parquet" in result.error and "'text' is missing" in result.error
    assert storage.list_names(out) == []  # refused before anything was written

    pq.write_table(pa.table({"id": [4], "text": [7]}), f"{data_bucket}/bad2/int-text.parquet", filesystem=fs)
    result = run_job(_manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/bad2/*.parquet"}), job_id="b2")
    assert result.status == "failed" and "int-text.parquet" in result.error and "expected string" in result.error


def test_null_empty_and_oversized_rows_are_row_errors(two_node_cluster, data_bucket):
    fs, _ = storage.filesystem(f"s3://{data_bucket}")
    texts = ["A short description of a package.", None, "", "word " * 5000, "Another fine package."]
    pq.write_table(pa.table({"id": list(range(5)), "text": texts}), f"{data_bucket}/rows/x.parquet", filesystem=fs)
    out = f"s3://{data_bucket}/out/rows"
    m = _manifest(data_bucket, out, input={"uri": f"s3://{data_bucket}/rows/x.parquet"},
                  params={"max_input_tokens": 512, "on_long_input": "error"})
    result = _run(m, two_node_cluster)
    assert result.status == "succeeded", result.error
    _assert_every_id_once(out, set(range(5)))
    fs, _ = storage.filesystem(out)
    rows = pq.read_table(storage.filesystem(f"{out}/{_parts(out)[0]}")[1], filesystem=fs).to_pylist()
    errors = {r["id"]: r["error"] for r in rows}
    assert errors[0] is None and errors[4] is None
    assert "null" in errors[1] and "empty" in errors[2] and "too long" in errors[3]
    assert _success(out)["error_rows"] == 3


# ---- chaos -------------------------------------------------------------------------------


def test_actor_killed_mid_shard_is_retried_elsewhere(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/actor-kill"
    with capture_logs() as events:  # the pool runs in this process: its structured events land here
        job = _Background(_manifest(data_bucket, out), two_node_cluster)
        _wait_for_parts(out, 2)
        deadline = time.monotonic() + 10
        while not (busy := _busy_inference_actors(two_node_cluster)):
            assert time.monotonic() < deadline, "no inference actor was working on a shard"
            time.sleep(0.05)
        _assert_mid_job(job, out)
        killed_at = time.time()
        busy[0].send_signal(signal.SIGKILL)
        result = job.join()
    assert result.status == "succeeded", result.error
    _assert_every_id_once(out, ALL_IDS)
    # The kill cost a shard its first attempt, and a second attempt committed that shard.
    lost = [e for e in events if e["event"] == "shard.actor_died"]
    assert [e["attempt"] for e in lost] == [1], f"expected one shard to lose its actor once: {lost}"
    retried = lost[0]["shard_id"]
    assert _committed_at(out, f"part-{retried}.parquet") >= killed_at, f"shard {retried} was not redone"


def test_node_killed_mid_job_its_shards_finish_elsewhere(two_node_cluster, data_bucket):
    out = f"s3://{data_bucket}/out/node-kill"
    job = _Background(_manifest(data_bucket, out, max_shard_attempts=4), two_node_cluster)
    _wait_for_parts(out, 2)
    _assert_mid_job(job, out)
    two_node_cluster.kill_node2()
    try:
        result = job.join()
        assert result.status == "succeeded", result.error
        _assert_every_id_once(out, ALL_IDS)
    finally:
        two_node_cluster.start_node2()  # later tests get two nodes again


def test_s3_outage_of_20s_mid_job_is_ridden_out(two_node_cluster, data_bucket, moto_server):
    out = f"s3://{data_bucket}/out/outage"
    job = _Background(_manifest(data_bucket, out), two_node_cluster)
    _wait_for_parts(out, 2)
    _assert_mid_job(job, out)
    moto_server.stop()
    try:
        time.sleep(20)
    finally:
        moto_server.restart()
    result = job.join()
    assert result.status == "succeeded", result.error
    _assert_every_id_once(out, ALL_IDS)


def _corrupt_second_row_group(bucket: str) -> tuple[str, set[int]]:
    """A file whose footer is fine (so planning passes) but whose second row group cannot be
    decoded: every attempt at that shard fails the same way."""
    sink = pa.BufferOutputStream()
    pq.write_table(_rows(list(range(5000, 5100))), sink, row_group_size=50, compression="zstd")
    data = bytearray(sink.getvalue().to_pybytes())
    meta = pq.ParquetFile(pa.BufferReader(bytes(data))).metadata
    col = meta.row_group(1).column(1)  # the text column of row group 1
    start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
    data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    uri = f"s3://{bucket}/broken/poison.parquet"
    s3.write_bytes(uri, bytes(data))
    return uri, set(range(5050, 5100))


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_shard_that_keeps_failing(two_node_cluster, data_bucket, policy):
    poison, bad_ids = _corrupt_second_row_group(data_bucket)
    out = f"s3://{data_bucket}/out/poison-{policy}"
    inputs = [f"s3://{data_bucket}/in/small-000.parquet", poison]
    m = _manifest(data_bucket, out, input={"uri": inputs}, on_shard_failure=policy, max_shard_attempts=2)
    result = _run(m, two_node_cluster)
    good = set(range(SMALL_ROWS)) | (set(range(5000, 5100)) - bad_ids)
    if policy == "fail":
        assert result.status == "failed"
        assert "after 2 attempt(s)" in result.error
        assert not storage.exists(f"{out}/_SUCCESS.json")
        ids = _output_ids(out)  # whatever was committed before the job stopped: once, and good rows only
        assert len(ids) == len(set(ids)) and set(ids) <= good
    else:
        assert result.status == "succeeded", result.error
        skipped = _success(out)["skipped_failed_shards"]
        assert len(skipped) == 1 and next(iter(skipped.values()))  # its id, with the reason
        _assert_every_id_once(out, good)
