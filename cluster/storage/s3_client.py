"""boto3 clients and pyarrow S3 filesystems, built from an `S3Settings` and cached per process.

boto3's own retries are off (total_max_attempts=1): cluster.storage.retry is the one retry layer
of every boto3 call. pyarrow keeps the AWS C++ SDK's retries: Parquet reads are not wrapped.
Credentials come from the AWS default chain of the process (env, profile, web identity,
instance metadata), never from the settings. Settings that carry a tenant's session policy
(`S3Settings.assumes_role`) get a session of their own: the process assumes the tenant role
with its default-chain credentials and signs with the temporary ones (cluster.storage.sts).
pyarrow takes credentials only as fixed values, so its filesystem is rebuilt whenever botocore
has refreshed them; a pyarrow filesystem holds them in clear, so it must never be pickled.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

import boto3
import pyarrow.fs as pafs
from botocore.config import Config
from botocore.exceptions import ClientError

from cluster.storage import retry, sts
from cluster.storage.settings import S3Settings, s3_settings
from cluster.storage.uri import split_s3

_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_sessions: dict[tuple, boto3.session.Session] = {}
_filesystems: dict[tuple, tuple[str | None, pafs.S3FileSystem]] = {}  # key -> (access key id, fs)
_bucket_regions: dict[str, str] = {}


def botocore_config(settings: S3Settings) -> Config:
    return Config(
        region_name=settings.region_name,
        retries={"mode": "standard", "total_max_attempts": 1},  # one request per attempt of retry.call
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=32,
        s3={"addressing_style": settings.addressing_style},
    )


def session(settings: S3Settings | None = None) -> boto3.session.Session:
    """The boto3 session for these settings: the tenant role's (assumed on first use, refreshed
    before expiry) when they carry a session policy, else the default chain's."""
    settings = settings or s3_settings()
    if not settings.assumes_role:
        return boto3.session.Session()
    key = (os.getpid(), settings)
    with _lock:
        if key not in _sessions:
            _sessions[key] = sts.assumed_session(
                settings.tenant_role_arn, settings.session_policy, settings.session_name or "llmbatch",
                sts_endpoint_url=settings.sts_endpoint_url, region=settings.region_name,
                duration_s=settings.session_seconds,
                sts_config=Config(connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
                                  retries={"mode": "standard", "total_max_attempts": 5}))
        return _sessions[key]


def client(settings: S3Settings | None = None):
    """A boto3 S3 client for this process and these settings (boto3 clients are thread-safe)."""
    settings = settings or s3_settings()
    key = (os.getpid(), settings)  # a client must not be shared across fork
    with _lock:
        cached = _clients.get(key)
    if cached is None:
        made = session(settings).client("s3", endpoint_url=settings.endpoint_url, config=botocore_config(settings))
        with _lock:
            cached = _clients.setdefault(key, made)
    return cached


def _credentials(settings: S3Settings) -> dict:
    """Fixed credentials for pyarrow: the tenant role's current ones (refreshed by botocore when
    near expiry), or none, leaving pyarrow to the default chain itself."""
    if not settings.assumes_role:
        return {}
    frozen = session(settings).get_credentials().get_frozen_credentials()
    return {"access_key": frozen.access_key, "secret_key": frozen.secret_key, "session_token": frozen.token}


def _bucket_region(bucket: str, settings: S3Settings) -> str:
    """The region for pyarrow, which (unlike boto3) does not follow AWS's region redirects:
    the configured one, else on AWS itself the bucket's own, looked up once."""
    if settings.region or settings.endpoint_url:
        return settings.region_name
    if bucket not in _bucket_regions:
        try:
            _bucket_regions[bucket] = pafs.resolve_s3_region(bucket)
        except OSError:
            _bucket_regions[bucket] = settings.region_name
    return _bucket_regions[bucket]


def filesystem(uri: str, settings: S3Settings | None = None) -> tuple[pafs.S3FileSystem, str]:
    """pyarrow's S3 filesystem (same endpoint and region as boto3) and "bucket/key" inside it."""
    settings = settings or s3_settings()
    bucket, key = split_s3(uri)
    region = _bucket_region(bucket, settings)
    cache_key = (os.getpid(), settings, region)
    credentials = _credentials(settings)
    with _lock:
        cached = _filesystems.get(cache_key)
        if cached is None or cached[0] != credentials.get("access_key"):  # new, or credentials refreshed
            kwargs: dict = {
                **credentials,
                "region": region,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.pyarrow_max_attempts),
                "connect_timeout": settings.connect_timeout_s,
                "request_timeout": settings.read_timeout_s,
            }
            if settings.endpoint_url:
                parsed = urlparse(settings.endpoint_url)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme or "https"
            cached = _filesystems[cache_key] = (credentials.get("access_key"), pafs.S3FileSystem(**kwargs))
        return cached[1], f"{bucket}/{key}".rstrip("/")


def missing_though_denied(exc: ClientError, bucket: str, key: str, settings: S3Settings | None = None) -> bool:
    """Whether a 403 on HeadObject means "no such key" under a tenant's session policy.

    S3 answers a missing key with 404 only to a caller that may list the bucket, and a tenant's
    `s3:ListBucket` carries an `s3:prefix` condition that a HeadObject never meets: AWS answers
    403. So the question is asked again as a listing of that exact key, which the policy allows
    inside the tenant's prefixes; outside them that is refused too, and the 403 stands."""
    settings = settings or s3_settings()
    if not settings.assumes_role or retry.http_status(exc) != 403:
        return False
    try:
        page = client(settings).list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    except ClientError:
        return False
    return not any(obj["Key"] == key for obj in page.get("Contents", []))  # the key itself sorts first
