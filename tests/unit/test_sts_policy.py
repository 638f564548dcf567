"""The STS session policy a tenant's job gets from its token's scope (cluster.storage.sts), and the
S3 settings that carry it: pure functions, no server. What AWS grants with such a policy is AWS's
to enforce; these tests pin down what we ask for."""

from __future__ import annotations

import json
import pickle

import pytest

from cluster.storage import sts
from cluster.storage.scope import ANY, Scope
from cluster.storage.settings import S3Settings

ROLE = "arn:aws:iam::123456789012:role/llmbatch-tenant"
WRITE = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def _statements(scope: Scope, partition: str = "aws") -> list[dict]:
    text = sts.session_policy(scope, partition)
    document = json.loads(text)
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def _by_action(statements: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            out.setdefault(action, []).append(statement)
    return out


def test_read_only_scope_reads_and_lists_its_prefix_and_writes_nothing():
    statements = _statements(Scope(read=("s3://team-a/data/",), write=(), who="token 'a'"))
    actions = _by_action(statements)
    assert set(actions) == {"s3:GetObject", "s3:ListBucket"}
    assert actions["s3:GetObject"][0]["Resource"] == ["arn:aws:s3:::team-a/data/*"]
    [listing] = actions["s3:ListBucket"]
    assert listing["Resource"] == "arn:aws:s3:::team-a"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["data/*"]}}
    assert all(s["Effect"] == "Allow" for s in statements)


def test_write_scope_writes_only_its_prefix_and_reads_back_what_it_wrote():
    scope = Scope(read=("s3://team-a/in/",), write=("s3://team-a/out/",), who="token 'a'")
    actions = _by_action(_statements(scope))
    for action in WRITE:
        assert actions[action][0]["Resource"] == ["arn:aws:s3:::team-a/out/*"]
    assert actions["s3:GetObject"][0]["Resource"] == ["arn:aws:s3:::team-a/in/*", "arn:aws:s3:::team-a/out/*"]
    [listing] = actions["s3:ListBucket"]  # one statement per bucket, one condition value per prefix
    assert listing["Condition"]["StringLike"]["s3:prefix"] == ["in/*", "out/*"]


def test_whole_bucket_prefix_lists_without_condition_and_buckets_stay_apart():
    scope = Scope(read=("s3://team-a/", "s3://shared/models/"), write=(), who="t")
    lists = {s["Resource"]: s for s in _by_action(_statements(scope))["s3:ListBucket"]}
    assert "Condition" not in lists["arn:aws:s3:::team-a"]
    assert lists["arn:aws:s3:::shared"]["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}


def test_a_prefix_is_a_whole_segment_so_a_sibling_bucket_folder_is_not_granted():
    [get] = _by_action(_statements(Scope(read=("s3://team-a/x",), write=(), who="t")))["s3:GetObject"]
    assert get["Resource"] == ["arn:aws:s3:::team-a/x/*"]  # not team-a/x* (which would match x-evil/)


def test_any_reads_everything_but_writes_only_its_prefixes():
    actions = _by_action(_statements(Scope(read=(ANY,), write=("s3://team-a/out/",), who="t")))
    assert actions["s3:GetObject"][0]["Resource"] == "arn:aws:s3:::*"
    assert actions["s3:ListBucket"][0]["Resource"] == "arn:aws:s3:::*"
    assert actions["s3:PutObject"][0]["Resource"] == ["arn:aws:s3:::team-a/out/*"]


def test_unrestricted_scope_has_no_policy_and_keeps_the_node_credentials():
    assert sts.session_policy(Scope.unrestricted()) is None
    settings = S3Settings(tenant_role_arn=ROLE)
    assert settings.for_scope(Scope.unrestricted()) is settings
    assert not settings.assumes_role


def test_local_paths_get_nothing_and_a_local_only_scope_denies_all_of_aws():
    mixed = _by_action(_statements(Scope(read=("/data/tenant-a/", "s3://team-a/in/"), write=("/out/a/",), who="t")))
    assert set(mixed) == {"s3:GetObject", "s3:ListBucket"}
    assert "/data" not in json.dumps(mixed)
    assert _statements(Scope(read=("/data/tenant-a/",), write=("/out/a/",), who="t")) == [sts.DENY_ALL]


def test_iam_wildcards_in_a_key_are_escaped_and_the_partition_follows_the_role():
    scope = Scope(read=("s3://team-a/we*ird?/$x/",), write=(), who="t")
    [get] = _by_action(_statements(scope, sts.partition_of("arn:aws-cn:iam::1:role/r")))["s3:GetObject"]
    assert get["Resource"] == ["arn:aws-cn:s3:::team-a/we${*}ird${?}/${$}x/*"]


def test_too_large_a_scope_is_refused_naming_the_token_and_the_limit():
    many = tuple(f"s3://team-a/project-{i:03d}/data/" for i in range(40))
    with pytest.raises(sts.SessionPolicyTooLarge, match=r"token 'a'.*40 S3 prefixes.*at most 2048"):
        S3Settings(tenant_role_arn=ROLE).for_scope(Scope(read=many, write=(), who="token 'a'"))
    exc = sts.SessionPolicyTooLarge("token 'a'", 3000, 40)
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)


def test_the_largest_accepted_policy_is_within_the_limit():
    fits = tuple(f"s3://team-a/p{i}/" for i in range(20))
    text = sts.session_policy(Scope(read=fits, write=fits[:5], who="t"))
    assert len(text) <= sts.MAX_POLICY_CHARS


def test_for_scope_sets_non_secret_fields_only_with_a_role_configured():
    scope = Scope(read=("s3://team-a/in/",), write=("s3://team-a/out/",), who="token 'alice smith'")
    assert S3Settings().for_scope(scope) == S3Settings()  # no role: nothing changes
    settings = S3Settings.from_env({"LLMBATCH_TENANT_ROLE_ARN": ROLE, "AWS_ENDPOINT_URL_STS": "http://sts:1"})
    job = settings.for_scope(scope)
    assert job.assumes_role and job.tenant_role_arn == ROLE and job.sts_endpoint_url == "http://sts:1"
    assert json.loads(job.session_policy) == sts.policy_document(scope)
    assert job.session_name == "llmbatch-token-alice-smith"
    assert hash(job) != hash(settings)  # clients are cached per settings: a tenant never shares one
    assert pickle.loads(pickle.dumps(job)) == job
    assert not S3Settings.from_env({}).tenant_role_arn


def test_session_names_fit_sts_rules():
    name = sts.session_name("token '" + "x" * 100 + "'/../é")
    assert 2 <= len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_+=,.@-") for c in name)
