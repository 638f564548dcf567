"""The service with the real job runner (jobs.run.inference.run_job) on a tiny random Llama: a
summarize job survives kill -9 of the service and ends with every input id exactly once."""

from __future__ import annotations

import time

import pyarrow.parquet as pq
import pytest

from jobs.service.auth import create_token
from jobs.cli.client import Client
from jobs.service.store.job_store import Store
from tests.support.output_files import assert_each_id_once, marker, part_files
from tests.support.paths import REPO
from tests.support.service_fixtures import Service

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
pytest.importorskip("jobs.run.inference")

# 32 shards of 2 rows: several scheduler ticks (1 s) of work after the first shard, even on an
# idle machine (16 rows of 24 tokens once ended within the tick that saw the first shard).
ROWS = 64


def test_kill9_mid_job_with_the_real_runner(ray_cluster, tmp_path):
    from tests.support.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    table = pq.read_table(REPO / "tests" / "data" / "summarize_sample.parquet", columns=["id", "text"]).slice(0, ROWS)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "docs.parquet")
    db = f"sqlite:///{tmp_path}/jobs.db"
    token = create_token(Store(db), "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
    manifest = {"name": "tiny-summaries", "task": "summarize", "model": str(model),
                "input": {"uri": str(tmp_path / "in"), "rows_per_shard": 2},
                "output": {"uri": str(tmp_path / "out" / "{run_id}")},
                "params": {"max_new_tokens": 64}, "resources": {"workers": 1, "batch_size": 2}}
    svc = Service(db, ray_cluster.address, runner=None, lease_s=600)
    svc2 = None
    try:
        c = Client(svc.url, token)
        job_id = c.submit(manifest)["job"]["id"]
        deadline = time.monotonic() + 180
        while (c.get(job_id).get("progress") or {}).get("shards_done", 0) < 1:
            assert time.monotonic() < deadline, c.get(job_id)
            time.sleep(0.3)
        svc.kill9()
        # The point is a kill mid-job: the dead scheduler must not have seen the job end (a job
        # that ends within one scheduler tick of its first shard is too short for this test).
        assert Store(db).get(job_id)["state"] == "running", "the job ended before the kill; make it longer"
        svc2 = Service(db, ray_cluster.address, runner=None, lease_s=600)
        c2 = Client(svc2.url, token)
        job = c2.wait(job_id, timeout_s=300)
        messages = [e["message"] or "" for e in c2.events(job_id)["events"]]
    finally:
        svc.stop()
        if svc2:
            svc2.stop()
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1 and any("re-attached" in m for m in messages)  # not started again
    out = tmp_path / "out" / job_id
    assert_each_id_once(out, table.column("id").to_pylist())  # in the files _SUCCESS.json lists
    assert marker(out)[0] == "_SUCCESS.json"
    assert part_files(out) == sorted(f["path"] for f in marker(out)[1]["files"])
    assert job["summary"]["rows"] == ROWS
