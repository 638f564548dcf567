"""Tenant-limited credentials against the loopback moto server, which serves STS as well as S3.

What is tested: settings from `S3Settings.for_scope` make the process call AssumeRole (with its
own base credentials) for the tenant role with the scope's session policy, and the boto3 client
and pyarrow filesystem then sign with the temporary credentials it returned, refreshed before
they expire; nothing secret is in the settings that travel through Ray. What is NOT tested, and
cannot be here: moto records the session policy but does not enforce it (a request outside the
tenant's prefixes succeeds on moto); enforcing it is AWS's job.
"""

from __future__ import annotations

import pickle
import uuid
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sts.models import sts_backends

from cluster import storage
from cluster.storage import s3, s3_client, sts
from cluster.storage.scope import Scope
from cluster.storage.settings import S3Settings
from jobs.cli.client import Client
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.s3_faults import Reply, requests_of
from tests.support.service_fixtures import Service, echo_manifest

pytestmark = [pytest.mark.integration, pytest.mark.s3]

ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/llmbatch-tenant"  # moto's account: the test's buckets are there


def _assumed(session_name: str) -> list:
    """What moto recorded for each AssumeRole call of this session name, in order."""
    return [r for r in sts_backends[DEFAULT_ACCOUNT_ID]["aws"].assumed_roles if r.session_name == session_name]


def _job_settings(bucket: str, **changes) -> S3Settings:
    tenant = f"token 'tenant-{uuid.uuid4().hex[:8]}'"  # a session name of its own for each test
    scope = Scope(read=(f"s3://{bucket}/in/",), write=(f"s3://{bucket}/out/",), who=tenant)
    base = replace(S3Settings.from_env(), tenant_role_arn=ROLE, **changes)
    return base.for_scope(scope)


def _signatures(client) -> list[tuple[str, str | None]]:
    """(access key id, session token) of every request the client sends from now on."""
    seen: list[tuple[str, str | None]] = []

    def record(request, **_):
        authorization = request.headers.get("Authorization")
        authorization = authorization.decode() if isinstance(authorization, bytes) else authorization
        key_id = authorization.split("Credential=")[1].split("/")[0]
        token = request.headers.get("X-Amz-Security-Token")
        seen.append((key_id, token.decode() if isinstance(token, bytes) else token))

    client.meta.events.register("before-send.s3", record)
    return seen


def test_job_settings_assume_the_tenant_role_with_the_scope_policy(s3_bucket):
    job = _job_settings(s3_bucket)
    assert job.sts_endpoint_url  # the loopback server (AWS_ENDPOINT_URL): STS and S3 on one port
    client = s3_client.client(job)
    signed = _signatures(client)
    client.put_object(Bucket=s3_bucket, Key="out/a.txt", Body=b"tenant bytes")
    assert client.get_object(Bucket=s3_bucket, Key="out/a.txt")["Body"].read() == b"tenant bytes"

    [assumed] = _assumed(job.session_name)  # assumed once, on first use, for both requests
    assert assumed.role_arn == ROLE and assumed.policy == job.session_policy
    assert signed == [(assumed.access_key_id, assumed.session_token)] * 2
    assert assumed.access_key_id != "testing"  # not the node's base credentials


def test_storage_calls_of_a_job_process_use_the_temporary_credentials(s3_bucket):
    job = _job_settings(s3_bucket)
    storage.use_s3_settings(job)  # what the runner actor and every worker actor do with what they get
    try:
        signed = _signatures(s3_client.client())
        storage.write_bytes(f"s3://{s3_bucket}/out/b.txt", b"x")
        assert storage.list_names(f"s3://{s3_bucket}/out") == ["b.txt"]
        fs, path = s3_client.filesystem(f"s3://{s3_bucket}/out/t.parquet")
        pq.write_table(pa.table({"a": [1, 2]}), path, filesystem=fs)
        assert pq.read_table(path, filesystem=fs).num_rows == 2
    finally:
        storage.use_s3_settings(None)
    [assumed] = _assumed(job.session_name)
    assert {key for key, _ in signed} == {assumed.access_key_id}
    assert fs.__reduce__()[1][0]["access_key"] == assumed.access_key_id  # pyarrow signs with them too


def test_credentials_are_assumed_again_before_they_expire(s3_bucket):
    job = _job_settings(s3_bucket, session_seconds=900)  # inside botocore's 15-minute refresh window
    client = s3_client.client(job)
    signed = _signatures(client)
    client.put_object(Bucket=s3_bucket, Key="out/1", Body=b"1")
    first_fs, _ = s3_client.filesystem(f"s3://{s3_bucket}/out/1", job)
    client.put_object(Bucket=s3_bucket, Key="out/2", Body=b"2")
    second_fs, _ = s3_client.filesystem(f"s3://{s3_bucket}/out/2", job)
    keys = [r.access_key_id for r in _assumed(job.session_name)]
    assert len(keys) >= 2 and len(set(keys)) == len(keys)  # each refresh is a new AssumeRole
    assert signed[0][0] != signed[1][0] and {signed[0][0], signed[1][0]} <= set(keys)
    fs_keys = [fs.__reduce__()[1][0]["access_key"] for fs in (first_fs, second_fs)]
    assert fs_keys[0] != fs_keys[1] and set(fs_keys) <= set(keys)  # pyarrow's fixed ones are replaced


def test_what_travels_to_other_processes_holds_no_credential(s3_bucket):
    job = _job_settings(s3_bucket)
    s3_client.client(job).head_bucket(Bucket=s3_bucket)
    [assumed] = _assumed(job.session_name)
    shipped = pickle.dumps(job)  # what Ray carries to the runner and its actors
    for secret in (assumed.access_key_id, assumed.secret_access_key, assumed.session_token, "testing"):
        assert secret.encode() not in shipped


def test_without_a_role_the_node_credentials_sign_as_before(s3_bucket):
    settings = S3Settings.from_env()
    assert settings.tenant_role_arn is None
    job = settings.for_scope(Scope(read=(f"s3://{s3_bucket}/",), write=(), who="token 'x'"))
    assert job == settings and not job.assumes_role
    signed = _signatures(s3_client.client(job))
    s3_client.client(job).list_objects_v2(Bucket=s3_bucket)
    assert signed[-1] == ("testing", None)


def _head_denied(op: str, _n: int) -> Reply | None:
    return Reply(403, "AccessDenied") if op == "HeadObject" else None  # what AWS answers a tenant


def _all_denied(_op: str, _n: int) -> Reply:
    return Reply(403, "AccessDenied")  # a key outside the tenant's prefixes: the listing is refused too


def test_a_403_on_a_missing_key_under_a_session_policy_reads_as_missing(s3_bucket):
    """AWS answers HeadObject on a missing key with 403 when ListBucket is limited by s3:prefix
    (moto answers 404: the 403 is injected); the listing of that key tells missing from refused."""
    job = _job_settings(s3_bucket)
    storage.use_s3_settings(job)
    try:
        storage.write_bytes(f"s3://{s3_bucket}/out/there", b"x")
        with requests_of(s3_client.client(), _head_denied) as sent:
            assert s3.head(f"s3://{s3_bucket}/out/missing") is None
            assert sent.sent == ["HeadObject", "ListObjectsV2"]
            with pytest.raises(ClientError, match="AccessDenied"):  # there, but refused: the 403 stands
                s3.head(f"s3://{s3_bucket}/out/there")
        with requests_of(s3_client.client(), _all_denied), pytest.raises(ClientError, match="AccessDenied"):
            s3.head(f"s3://{s3_bucket}/other/missing")
    finally:
        storage.use_s3_settings(None)
    with requests_of(s3_client.client(), _head_denied), pytest.raises(ClientError, match="AccessDenied"):
        s3.head(f"s3://{s3_bucket}/out/missing")  # node credentials: a 403 is a 403


def test_a_tenant_job_on_the_service_signs_with_the_role_its_scope_allows(
        moto_server, s3_bucket, ray_cluster, services, tmp_path, monkeypatch):
    """The whole path: `serve` with LLMBATCH_TENANT_ROLE_ARN, a token limited to two prefixes,
    a job whose runner actor (another process, on the Ray cluster) reads and writes S3."""
    monkeypatch.setenv("LLMBATCH_TENANT_ROLE_ARN", ROLE)  # the service's environment
    store = Store(f"sqlite:///{tmp_path}/jobs.db")
    name = f"tenant-{uuid.uuid4().hex[:8]}"
    read, write = f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/"
    secret = create_token(store, name, input_prefixes=[read], output_prefixes=[write])
    storage.write_bytes(read + "rows.txt", b"tenant rows")
    svc = Service(store.url, ray_cluster.address, runner="tests.support.sts_probe:probe_run")
    services.append(svc)
    client = Client(svc.url, secret)
    job_id = client.submit(echo_manifest("sts", read, write + "run1"))["job"]["id"]
    job = client.wait(job_id, timeout_s=180)
    client.close()
    store.close()
    assert job["state"] == "succeeded", job
    assert storage.read_bytes(write + "run1/copy.txt") == b"tenant rows"
    [assumed] = _assumed(sts.session_name(f"token '{name}'"))  # one AssumeRole: the runner actor's
    assert assumed.role_arn == ROLE
    assert assumed.policy == sts.session_policy(Scope(read=(read,), write=(write,), who=name))
    assert storage.read_bytes(write + "run1/signed-with.txt").decode() == f"{assumed.access_key_id} True"
