"""boto3 clients and pyarrow S3 filesystems, built from an `S3Settings` and cached per process.

boto3's own retries are off (total_max_attempts=1): cluster.storage.retry is the one retry layer
of every boto3 call. pyarrow keeps the AWS C++ SDK's retries: Parquet reads are not wrapped.
Credentials come from the AWS default chain of the process (env, profile, web identity,
instance metadata), never from the settings.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

import boto3
import pyarrow.fs as pafs
from botocore.config import Config

from cluster.storage.settings import S3Settings, s3_settings
from cluster.storage.uri import split_s3

_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_filesystems: dict[tuple, pafs.S3FileSystem] = {}
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


def client(settings: S3Settings | None = None):
    """A boto3 S3 client for this process and these settings (boto3 clients are thread-safe)."""
    settings = settings or s3_settings()
    key = (os.getpid(), settings)  # a client must not be shared across fork
    with _lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session().client(
                "s3", endpoint_url=settings.endpoint_url, config=botocore_config(settings))
        return _clients[key]


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
    with _lock:
        if cache_key not in _filesystems:
            kwargs: dict = {
                "region": region,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.pyarrow_max_attempts),
                "connect_timeout": settings.connect_timeout_s,
                "request_timeout": settings.read_timeout_s,
            }
            if settings.endpoint_url:
                parsed = urlparse(settings.endpoint_url)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme or "https"
            _filesystems[cache_key] = pafs.S3FileSystem(**kwargs)
        return _filesystems[cache_key], f"{bucket}/{key}".rstrip("/")
