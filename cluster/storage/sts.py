"""Tenant-limited AWS credentials: an STS session policy derived from a `Scope`, assumed per process.

Our own scope checks (submit and open time) are the first line of defence; this is the second.
Where the service is configured with a tenant role (`LLMBATCH_TENANT_ROLE_ARN`), a tenant's job
carries, in its `S3Settings`, the session policy built here from the token's prefixes. Each
process of the job then calls `sts:AssumeRole` itself, with its node's own base credentials, and
signs every S3 request with the temporary credentials it gets back: whatever the process does,
AWS grants it at most the intersection of the role's policy and this session policy. Only the
role ARN and the policy (both non-secret) travel through Ray; the credentials never leave the
process that assumed them, and are refreshed by botocore before they expire.

The policy grants, per S3 prefix: `s3:GetObject` on read and write prefixes (a job reads back
what it wrote: resume, commit checks), `s3:PutObject`, `s3:DeleteObject` and
`s3:AbortMultipartUpload` on write prefixes, and `s3:ListBucket` on each bucket with an
`s3:prefix` condition per prefix. Local paths get nothing. STS refuses a session policy over
2,048 characters, so a scope that needs a longer one is refused here, by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials

from cluster.storage.scope import ANY, Scope
from cluster.storage.uri import is_s3, split_s3

MAX_POLICY_CHARS = 2048  # STS: "the plaintext ... can't exceed 2,048 characters"
WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
DENY_ALL = {"Effect": "Deny", "Action": "*", "Resource": "*"}  # a scope with no S3 prefix at all
_IAM_SPECIAL = {"*": "${*}", "?": "${?}", "$": "${$}"}  # literal wildcards in a key, escaped for IAM


class SessionPolicyTooLarge(ValueError):
    """A scope whose session policy would exceed what STS accepts; names the scope and the limit."""

    def __init__(self, who: str, size: int, prefixes: int):
        super().__init__(
            f"{who}: its {prefixes} S3 prefixes need a session policy of {size} characters; "
            f"STS allows at most {MAX_POLICY_CHARS} (use fewer or wider prefixes)")
        self.who, self.size, self.prefixes = who, size, prefixes

    def __reduce__(self):  # crosses Ray boundaries: rebuild from the same arguments
        return (SessionPolicyTooLarge, (self.who, self.size, self.prefixes))


def partition_of(role_arn: str) -> str:
    """"aws", "aws-cn", "aws-us-gov" ...: resource ARNs must name the role's partition."""
    parts = role_arn.split(":")
    return parts[1] if len(parts) > 2 and parts[0] == "arn" and parts[1] else "aws"


def _escape(key: str) -> str:
    return "".join(_IAM_SPECIAL.get(ch, ch) for ch in key)


def _s3_prefixes(prefixes: Iterable[str]) -> list[tuple[str, str]]:
    """(bucket, key prefix ending in "/" or "") of each S3 prefix, in order, without repeats."""
    out: list[tuple[str, str]] = []
    for prefix in prefixes:
        if not is_s3(prefix):
            continue  # local paths: nothing on AWS
        bucket, key = split_s3(prefix)
        key = key.strip("/")
        entry = (bucket, f"{key}/" if key else "")
        if entry not in out:
            out.append(entry)
    return out


def _objects(arn: str, prefixes: list[tuple[str, str]]) -> list[str]:
    return [f"{arn}{bucket}/{_escape(key)}*" for bucket, key in prefixes]


def _list_statements(arn: str, prefixes: list[tuple[str, str]]) -> list[dict]:
    """One `s3:ListBucket` per bucket, limited by `s3:prefix` unless the whole bucket is allowed."""
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in prefixes:
        by_bucket.setdefault(bucket, []).append(key)
    statements = []
    for bucket, keys in by_bucket.items():
        statement: dict = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"{arn}{bucket}"}
        if "" not in keys:
            statement["Condition"] = {"StringLike": {"s3:prefix": [f"{_escape(k)}*" for k in keys]}}
        statements.append(statement)
    return statements


def policy_document(scope: Scope, partition: str = "aws") -> dict | None:
    """The session policy of a scope, as a dict; None for an unrestricted scope (nothing to limit)."""
    if scope.is_unrestricted:
        return None
    arn = f"arn:{partition}:s3:::"
    statements: list[dict] = []
    if ANY in scope.read or ANY in scope.write:  # reads of anything (a write ANY reads back too)
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": f"{arn}*"})
    else:
        readable = _s3_prefixes([*scope.read, *scope.write])
        if readable:
            statements.append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": _objects(arn, readable)})
            statements.extend(_list_statements(arn, readable))
    if ANY in scope.write:
        statements.append({"Effect": "Allow", "Action": WRITE_ACTIONS, "Resource": f"{arn}*"})
    elif writable := _s3_prefixes(scope.write):
        statements.append({"Effect": "Allow", "Action": WRITE_ACTIONS, "Resource": _objects(arn, writable)})
    return {"Version": "2012-10-17", "Statement": statements or [DENY_ALL]}


def session_policy(scope: Scope, partition: str = "aws") -> str | None:
    """The policy as the compact JSON STS takes; refuses one over STS's 2,048-character limit."""
    document = policy_document(scope, partition)
    if document is None:
        return None
    text = json.dumps(document, separators=(",", ":"))
    if len(text) > MAX_POLICY_CHARS:
        count = len(_s3_prefixes([*scope.read, *scope.write]))
        raise SessionPolicyTooLarge(scope.who, len(text), count)
    return text


def session_name(who: str) -> str:
    """A RoleSessionName (2-64 of [\\w+=,.@-]) naming the tenant, so CloudTrail shows whose job it was."""
    name = re.sub(r"[^\w+=,.@-]+", "-", f"llmbatch-{who}", flags=re.ASCII).strip("-")
    return name[:64]


class _AssumedRoleProvider(CredentialProvider):
    """The only credential provider of a tenant session: AssumeRole on first use, again before expiry."""

    METHOD = "llmbatch-assume-role"
    CANONICAL_NAME = "llmbatch-assume-role"

    def __init__(self, fetch: Callable[[], dict]):
        super().__init__()
        self._fetch = fetch

    def load(self):
        return DeferredRefreshableCredentials(refresh_using=self._fetch, method=self.METHOD)


def assumed_session(role_arn: str, policy: str, name: str, *, sts_endpoint_url: str | None,
                    region: str, duration_s: int, sts_config: Config) -> boto3.session.Session:
    """A boto3 session whose credentials are the role's, limited by `policy`: assumed lazily with
    this node's own base credentials (its default chain) and re-assumed by botocore before expiry."""
    sts = boto3.session.Session().client(
        "sts", endpoint_url=sts_endpoint_url, region_name=region, config=sts_config)

    def fetch() -> dict:
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=name, Policy=policy,
                                DurationSeconds=duration_s)["Credentials"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    core = botocore.session.Session()
    resolver = core.get_component("credential_provider")
    resolver.providers = [_AssumedRoleProvider(fetch)]  # never fall back to the node's own credentials
    return boto3.session.Session(botocore_session=core, region_name=region)
