"""S3 settings as one explicit, picklable object, so they reach Ray actors as an argument.

A driver builds them from its environment (`S3Settings.from_env()`) and hands them to every actor
it starts; the actor installs them with `use_s3_settings()` before it touches storage. Nothing
here is a credential: keys, tokens and profiles come from each node's own AWS default chain.
A process that was never handed settings (a driver, a CLI) reads its environment at each call,
so a setting changed there (tests do) applies to the next call.

With a tenant role configured (`LLMBATCH_TENANT_ROLE_ARN`), `for_scope` adds a job's STS session
policy (cluster.storage.sts): still no secret, only what each process needs to assume the role
itself and get credentials limited to the tenant's prefixes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from cluster.storage import sts
from cluster.storage.scope import Scope

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Where the store is and how patiently to talk to it; hashable, so it keys client caches."""

    endpoint_url: str | None = None  # an S3-compatible store (MinIO, Ceph, loopback); None: AWS
    region: str | None = None  # None: not configured (boto3 uses us-east-1, pyarrow asks the bucket)
    addressing_style: str = "auto"  # "path" for custom endpoints: they rarely resolve bucket subdomains
    retry_seconds: float = 90.0  # how long one call keeps retrying: rides out a store restart
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    pyarrow_max_attempts: int = 10  # pyarrow (Parquet reads) retries inside the AWS C++ SDK
    multipart_threshold: int = 64 * 1024 * 1024
    sts_endpoint_url: str | None = None  # where AssumeRole goes (loopback in tests); None: AWS
    tenant_role_arn: str | None = None  # the role a tenant's job assumes; None: node credentials
    session_policy: str | None = None  # the job's STS session policy (JSON), set by for_scope
    session_name: str | None = None  # RoleSessionName: names the tenant in CloudTrail
    session_seconds: int = 3600  # DurationSeconds of each AssumeRole; botocore refreshes before

    @property
    def assumes_role(self) -> bool:
        """True when this process signs S3 requests with credentials of the tenant role."""
        return bool(self.tenant_role_arn and self.session_policy)

    def for_scope(self, scope: Scope | None) -> S3Settings:
        """The settings a job's processes use: with a tenant role configured and a limited scope,
        its session policy; otherwise (None: unrestricted) these settings as they are (node
        credentials). Raises sts.SessionPolicyTooLarge for a scope STS cannot express."""
        if not self.tenant_role_arn or scope is None or scope.is_unrestricted:
            return self
        policy = sts.session_policy(scope, sts.partition_of(self.tenant_role_arn))
        return replace(self, session_policy=policy, session_name=sts.session_name(scope.who))

    @property
    def region_name(self) -> str:
        return self.region or DEFAULT_REGION

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """The settings the AWS CLI would see, plus llmbatch's own `LLMBATCH_S3_*` knobs."""
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        defaults = cls()
        return cls(
            endpoint_url=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            addressing_style="path" if endpoint else "auto",
            retry_seconds=float(env.get("LLMBATCH_S3_RETRY_SECONDS", defaults.retry_seconds)),
            pyarrow_max_attempts=int(env.get("LLMBATCH_S3_MAX_ATTEMPTS", defaults.pyarrow_max_attempts)),
            multipart_threshold=int(env.get("LLMBATCH_S3_MULTIPART_THRESHOLD", defaults.multipart_threshold)),
            sts_endpoint_url=env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or None,
            tenant_role_arn=env.get("LLMBATCH_TENANT_ROLE_ARN") or None,
            session_seconds=int(env.get("LLMBATCH_TENANT_SESSION_SECONDS", defaults.session_seconds)),
        )


_installed: S3Settings | None = None


def use_s3_settings(settings: S3Settings | None) -> None:
    """Make `settings` this process's S3 settings (an actor, with what its driver sent);
    None goes back to reading the environment."""
    global _installed
    _installed = settings


def s3_settings() -> S3Settings:
    """The settings this process uses now: the installed ones, else its environment's."""
    return _installed if _installed is not None else S3Settings.from_env()
