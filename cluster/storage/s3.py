"""`s3://` behind cluster.storage: pyarrow's S3 filesystem for Parquet, boto3 for object calls.

Settings come from the environment, so Ray workers see what the driver sees (`worker_env()`):
endpoint `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (an S3-compatible store; else AWS),
region `AWS_REGION` / `AWS_DEFAULT_REGION`, credentials from the AWS default chain (env,
profile, web identity, instance metadata). Each request is retried by botocore/pyarrow, and each
call as a whole by cluster.storage.retry, so a store that is down for tens of seconds is ridden out.
"""

from __future__ import annotations

import io
import os
import threading
import time
from urllib.parse import urlparse

import pyarrow.fs as pafs
import structlog

from cluster.storage import retry
from cluster.storage import FileRef

log = structlog.get_logger()

_ENV_KEYS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "LLMBATCH_S3_MAX_ATTEMPTS",
    "LLMBATCH_S3_RETRY_MODE",
    "LLMBATCH_S3_RETRY_SECONDS",
    "LLMBATCH_S3_MULTIPART_THRESHOLD",
)
_lock = threading.Lock()
_clients: dict[tuple, object] = {}
_filesystems: dict[tuple, pafs.S3FileSystem] = {}
_bucket_regions: dict[str, str] = {}


# ---- settings ------------------------------------------------------------------------------


def configure(endpoint_url: str | None = None, region: str | None = None) -> None:
    """Apply the service's settings; the environment carries them to Ray workers on this node."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    if region:
        os.environ["AWS_REGION"] = region


def worker_env() -> dict[str, str]:
    """The S3 settings to pass to remote workers (Ray runtime_env env_vars); no credentials."""
    return {k: os.environ[k] for k in _ENV_KEYS if os.environ.get(k)}


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def max_attempts() -> int:
    return int(os.environ.get("LLMBATCH_S3_MAX_ATTEMPTS", "10"))


def multipart_threshold() -> int:
    return int(os.environ.get("LLMBATCH_S3_MULTIPART_THRESHOLD", str(64 * 1024 * 1024)))


def _settings_key() -> tuple:
    # pid: clients must not be shared across fork; settings: tests switch endpoints.
    return (os.getpid(), endpoint_url(), region(), max_attempts(), os.environ.get("LLMBATCH_S3_RETRY_MODE"))


# ---- clients -------------------------------------------------------------------------------


def client():
    """A boto3 S3 client for this process and these settings (cached; boto3 clients are thread-safe)."""
    key = _settings_key()
    with _lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            cfg = Config(
                region_name=region(),
                retries={"mode": os.environ.get("LLMBATCH_S3_RETRY_MODE", "standard"), "max_attempts": max_attempts()},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
                # A custom endpoint (MinIO, Ceph, loopback) rarely resolves bucket subdomains.
                s3={"addressing_style": "path" if endpoint_url() else "auto"},
            )
            _clients[key] = boto3.session.Session().client("s3", endpoint_url=endpoint_url(), config=cfg)
        return _clients[key]


def _bucket_region(bucket: str) -> str:
    """The region for pyarrow, which (unlike boto3) does not follow AWS's region redirects:
    the configured one, else on AWS itself the bucket's own, looked up once."""
    if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or endpoint_url():
        return region()
    if bucket not in _bucket_regions:
        try:
            _bucket_regions[bucket] = pafs.resolve_s3_region(bucket)
        except OSError:
            _bucket_regions[bucket] = region()
    return _bucket_regions[bucket]


def filesystem(uri: str) -> tuple[pafs.S3FileSystem, str]:
    """pyarrow's S3 filesystem (same endpoint, region, retries) and "bucket/key" inside it."""
    bucket, key = split(uri)
    bucket_region = _bucket_region(bucket)
    skey = (*_settings_key(), bucket_region)
    with _lock:
        if skey not in _filesystems:
            kwargs: dict = {
                "region": bucket_region,
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
                "connect_timeout": 5,
                "request_timeout": 60,
            }
            ep = endpoint_url()
            if ep:
                parsed = urlparse(ep)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme or "https"
            _filesystems[skey] = pafs.S3FileSystem(**kwargs)
        return _filesystems[skey], f"{bucket}/{key}".rstrip("/")


def split(uri: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b")."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def _code(exc: Exception) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    resp = getattr(exc, "response", None) or {}
    return int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


# ---- object calls --------------------------------------------------------------------------


def list_objects(prefix_uri: str) -> list[FileRef]:
    """Every object whose key starts with the prefix (no delimiter: nested keys included)."""
    bucket, prefix = split(prefix_uri)

    def _list() -> list[FileRef]:
        refs = []
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                refs.append(FileRef(uri=f"s3://{bucket}/{obj['Key']}", size=obj["Size"], version=obj["ETag"].strip('"')))
        return refs

    return retry.call(_list, what=f"list {prefix_uri}")


def head(uri: str) -> FileRef | None:
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    if not key:
        return None

    def _head() -> FileRef | None:
        try:
            r = client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return FileRef(uri=f"s3://{bucket}/{key}", size=r["ContentLength"], version=r["ETag"].strip('"'))

    return retry.call(_head, what=f"head {uri}")


def get(uri: str) -> bytes:
    from botocore.exceptions import ClientError

    bucket, key = split(uri)

    def _get() -> bytes:
        try:
            return client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise

    return retry.call(_get, what=f"get {uri}")


def download_file(uri: str, dest: str) -> None:
    """Stream one object to a local file (parallel ranged GETs for large objects)."""
    bucket, key = split(uri)
    retry.call(lambda: client().download_file(bucket, key, dest), what=f"download {uri}")


def put(uri: str, data: bytes) -> None:
    """Write (or replace) an object whole; multipart above LLMBATCH_S3_MULTIPART_THRESHOLD."""
    bucket, key = split(uri)
    if len(data) < multipart_threshold():
        retry.call(lambda: client().put_object(Bucket=bucket, Key=key, Body=data), what=f"put {uri}")
        return
    from boto3.s3.transfer import TransferConfig

    cfg = TransferConfig(multipart_threshold=multipart_threshold(), multipart_chunksize=_part_size(len(data)))
    retry.call(lambda: client().upload_fileobj(io.BytesIO(data), bucket, key, Config=cfg), what=f"put {uri}")


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create the object only if no object has that key; True if this call created it.

    The condition (`If-None-Match: *`) is checked by the store atomically with the write, so two
    racing attempts commit once. 412 = someone else's object is there. 409 = a concurrent
    conditional write is in flight: retry, and the retry answers 412 or wins if that one failed.
    A retried request whose first try did land answers 412 too: the object exists either way.
    """
    from botocore.exceptions import ClientError

    bucket, key = split(uri)
    conflicts = 0
    while True:
        try:
            if len(data) < multipart_threshold():
                retry.call(
                    lambda: client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"),
                    what=f"put_if_absent {uri}",
                )
            else:
                _multipart_if_absent(bucket, key, data)
            return True
        except ClientError as exc:
            if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                return False
            if (_status(exc) == 409 or _code(exc) == "ConditionalRequestConflict") and conflicts < 8:
                conflicts += 1
                time.sleep(0.2 * 2**conflicts)
                continue
            raise


def _part_size(total: int) -> int:
    # S3 allows at most 10,000 parts of at least 5 MiB each.
    return max(8 * 1024 * 1024, -(-total // 9_000))


def _multipart_if_absent(bucket: str, key: str, data: bytes) -> None:
    """A multipart upload whose completion is conditional: the object appears whole, or not at all."""
    c = client()
    upload_id = retry.call(lambda: c.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"], what=f"mpu {key}")
    try:
        size = _part_size(len(data))
        parts = []
        for n, off in enumerate(range(0, len(data), size), start=1):
            chunk = data[off : off + size]
            etag = retry.call(
                lambda: c.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=chunk)["ETag"],
                what=f"upload_part {key}#{n}",
            )
            parts.append({"PartNumber": n, "ETag": etag})
        retry.call(
            lambda: c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
            ),
            what=f"complete {key}",
        )
    except BaseException:
        try:
            c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception:  # noqa: BLE001 - best effort; a lifecycle rule reaps leftovers
            log.warning("s3.abort_failed", key=key, upload_id=upload_id)
        raise


def delete(uri: str) -> None:
    bucket, key = split(uri)
    retry.call(lambda: client().delete_object(Bucket=bucket, Key=key), what=f"delete {uri}")


def delete_prefix(prefix_uri: str) -> None:
    """Delete every object under the prefix, 1,000 keys per request."""
    bucket, _ = split(prefix_uri)
    keys = [split(r.uri)[1] for r in list_objects(prefix_uri)]
    for i in range(0, len(keys), 1000):
        batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
        resp = retry.call(lambda: client().delete_objects(Bucket=bucket, Delete=batch), what=f"delete_prefix {prefix_uri}")
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise OSError(f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Message')}")
