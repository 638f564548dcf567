"""S3 settings as one explicit, picklable object, so they reach Ray actors as an argument.

A driver builds them from its environment (`S3Settings.from_env()`) and hands them to every actor
it starts; the actor installs them with `use_s3_settings()` before it touches storage. Nothing
here is a credential: keys, tokens and profiles come from each node's own AWS default chain.
A process that was never handed settings (a driver, a CLI) reads its environment at each call,
so a setting changed there (tests do) applies to the next call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

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
