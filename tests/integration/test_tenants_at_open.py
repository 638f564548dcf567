"""Two tenants on one machine, scopes checked where the worker opens each file (real local Ray).

Each job runs under tenant-a's scope, through the runner (`run_job(..., scope=...)`, the call the
service's runner actor makes) or through the service itself (the owner's token). Symlinks inside
tenant-a's folders, planted before or swapped in after the job was planned, never lead a read
or a write into tenant-b's folder or /etc: the job fails with one line naming the file and the
rule, and tenant-b's rows never reach the output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.storage.scope import Scope, canonical_prefix
from jobs.cli.client import Client
from jobs.lifecycle import JobState
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.service_fixtures import Service

pytestmark = pytest.mark.integration

RULE = "outside its allowed prefixes"


@pytest.fixture()
def tenants(tmp_path):
    a, b = tmp_path / "tenant-a", tmp_path / "tenant-b"
    (a / "in").mkdir(parents=True)
    b.mkdir()
    pq.write_table(pa.table({"id": ["a1", "a2"], "text": ["Mine one. More.", "Mine two. More."]}),
                   a / "in" / "mine.parquet")
    pq.write_table(pa.table({"id": ["b-secret"], "text": ["Tenant b secret. More."]}), b / "secret.parquet")
    prefix = (canonical_prefix(str(a)),)
    return a, b, Scope(read=prefix, write=prefix, who="token 'tenant-a'")


def manifest(input_uri, output_uri):
    return parse_manifest({
        "name": "tenant-a-job", "task": "summarize", "model": "builtin:smollm2-135m-instruct",
        "engine": "baseline", "input": {"uri": str(input_uri)}, "output": {"uri": str(output_uri)},
        "resources": {"workers": 1, "cpus_per_worker": 1}, "max_shard_attempts": 1,
    })


def ids_under(folder: Path) -> list[str]:
    return [i for p in folder.rglob("part-*.parquet") for i in pq.read_table(p).column("id").to_pylist()]


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def once(action):
    """An on_progress hook that acts at the first report: after planning and `_manifest.json`,
    before any shard is read or written."""
    done = []

    def hook(_progress):
        if not done:
            done.append(True)
            action()
    return hook


def test_a_folder_input_holding_a_symlink_to_tenant_b_is_refused(ray_local, tenants):
    a, b, scope = tenants
    os.symlink(b / "secret.parquet", a / "in" / "theirs.parquet")
    result = run_job(manifest(a / "in", a / "out"), job_id="tenant-a-folder", scope=scope)
    assert result.status is JobState.FAILED
    assert "theirs.parquet" in result.error and RULE in result.error and "\n" not in result.error
    assert "b-secret" not in ids_under(a)


def test_b_glob_matching_a_symlink_to_etc_passwd_is_refused(ray_local, tenants):
    a, _, scope = tenants
    os.symlink("/etc/passwd", a / "in" / "passwd.parquet")
    result = run_job(manifest(a / "in" / "*.parquet", a / "out"), job_id="tenant-a-glob", scope=scope)
    assert result.status is JobState.FAILED
    assert "passwd.parquet" in result.error and RULE in result.error
    assert not (a / "out").exists()  # refused at planning: nothing was opened or written


@pytest.mark.parametrize("reads_b", [False, True], ids=["reads-own", "reads-b-too"])
def test_c_output_folder_swapped_for_a_symlink_after_planning_writes_nothing_in_tenant_b(ray_local, tenants, reads_b):
    """A token that may also read tenant-b (a shared dataset) still may not write there: then the
    part's write itself is refused; with reads of its own only, already the look for the part."""
    a, b, scope = tenants
    if reads_b:
        scope = Scope(read=scope.read + (canonical_prefix(str(b)),), write=scope.write, who=scope.who)
    (b / "stolen").mkdir()
    before = files_in(b)

    def swap():
        os.rename(a / "out", a / "out-planned")
        os.symlink(b / "stolen", a / "out")

    result = run_job(manifest(a / "in", a / "out"), job_id="tenant-a-out-swap", scope=scope, on_progress=once(swap))
    assert result.status is JobState.FAILED
    assert ("may not write" if reads_b else "may not read") in result.error
    assert "part-" in result.error and RULE in result.error
    assert files_in(b) == before  # no part, no _SUCCESS.json in tenant-b


def test_c_output_folder_that_is_a_symlink_at_start_is_refused(ray_local, tenants):
    a, b, scope = tenants
    (b / "stolen").mkdir()
    os.symlink(b / "stolen", a / "out")
    result = run_job(manifest(a / "in", a / "out"), job_id="tenant-a-out-link", scope=scope)
    assert result.status is JobState.FAILED and RULE in result.error
    assert files_in(b / "stolen") == []


def test_d_input_swapped_for_a_symlink_after_planning_is_refused_at_read(ray_local, tenants):
    a, b, scope = tenants

    def swap():
        os.replace(a / "in" / "mine.parquet", a / "mine-old.parquet")
        os.symlink(b / "secret.parquet", a / "in" / "mine.parquet")

    result = run_job(manifest(a / "in", a / "out"), job_id="tenant-a-in-swap", scope=scope, on_progress=once(swap))
    assert result.status is JobState.FAILED
    assert "mine.parquet" in result.error and "may not read" in result.error and RULE in result.error
    assert "b-secret" not in ids_under(a)


def test_the_same_job_without_symlinks_succeeds_under_the_scope(ray_local, tenants):
    a, _, scope = tenants
    result = run_job(manifest(a / "in", a / "out"), job_id="tenant-a-ok", scope=scope)
    assert result.ok, result.error
    assert sorted(ids_under(a / "out")) == ["a1", "a2"]


def test_the_service_runs_a_job_under_its_owners_token(ray_cluster, tenants, tmp_path):
    """The scheduler looks up the owner's token and hands its scope to the runner actor."""
    a, b, _ = tenants
    os.symlink(b / "secret.parquet", a / "in" / "theirs.parquet")
    db = f"sqlite:///{tmp_path}/jobs.db"
    token = create_token(Store(db), "tenant-a", input_prefixes=[str(a)], output_prefixes=[str(a)])
    create_token(Store(db), "tenant-b", input_prefixes=[str(b)], output_prefixes=[str(b)])
    svc = Service(db, ray_cluster.address, runner=None)
    try:
        c = Client(svc.url, token)
        job_id = c.submit(manifest(a / "in", a / "out").model_dump(mode="json"))["job"]["id"]
        job = c.wait(job_id, timeout_s=180)
    finally:
        svc.stop()
    assert job["state"] == "failed", job
    assert "theirs.parquet" in job["error"] and RULE in job["error"] and "Traceback" not in job["error"]
    assert "b-secret" not in ids_under(a)
