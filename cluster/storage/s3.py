"""The `s3://` backend (see cluster.storage.backend): object calls through boto3, Parquet
through pyarrow's S3 filesystem, for AWS or any S3-compatible store.

Settings (endpoint, region, retry budget) come from `S3Settings` (cluster.storage.settings);
every boto3 call is retried by cluster.storage.retry and nothing else. The conditional create
that commits a shard lives in cluster.storage.s3_conditional.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from cluster.storage import retry
from cluster.storage.backend import FileRef
from cluster.storage.s3_client import client, filesystem, missing_though_denied
from cluster.storage.s3_conditional import put_if_absent, upload_part_size
from cluster.storage.settings import s3_settings
from cluster.storage.uri import as_prefix, glob_base, glob_regex, has_glob, is_hidden, split_s3

__all__ = [
    "client", "delete", "delete_prefix", "download_file", "exists", "filesystem", "head", "list_files",
    "list_names", "list_objects", "put_if_absent", "read_bytes", "write_bytes",
]


def _retried(fn, what: str):
    return retry.call(fn, what=what, deadline=s3_settings().retry_seconds)


def list_objects(prefix_uri: str) -> list[FileRef]:
    """Every object whose key starts with the prefix (no delimiter: nested keys included)."""
    bucket, prefix = split_s3(prefix_uri)

    def _list() -> list[FileRef]:
        refs = []
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                refs.append(FileRef(uri=f"s3://{bucket}/{obj['Key']}", size=obj["Size"], version=obj["ETag"].strip('"')))
        return refs

    return _retried(_list, f"list {prefix_uri}")


def _is_missing(exc: ClientError) -> bool:
    return retry.http_status(exc) == 404 or retry.error_code(exc) in ("404", "NoSuchKey", "NotFound")


def head(uri: str) -> FileRef | None:
    """The object's size and ETag, or None if there is no such object."""
    bucket, key = split_s3(uri)
    if not key:
        return None

    def _head() -> FileRef | None:
        try:
            r = client().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc) or missing_though_denied(exc, bucket, key):  # 403: a tenant's policy
                return None
            raise
        return FileRef(uri=f"s3://{bucket}/{key}", size=r["ContentLength"], version=r["ETag"].strip('"'))

    return _retried(_head, f"head {uri}")


def list_files(uri: str, suffix: str) -> list[FileRef]:
    if has_glob(uri):
        pattern = glob_regex(uri)
        return [r for r in list_objects(glob_base(uri)) if pattern.fullmatch(r.uri)]
    refs = list_objects(as_prefix(uri))
    if refs:
        return [r for r in refs if r.uri.endswith(suffix) and not is_hidden(PurePosixPath(r.uri).name)]
    one = head(uri)
    return [one] if one else []


def exists(uri: str) -> bool:
    return head(uri) is not None


def list_names(uri: str) -> list[str]:
    prefix = as_prefix(uri)
    return sorted(r.uri[len(prefix) :] for r in list_objects(prefix) if "/" not in r.uri[len(prefix) :])


def read_bytes(uri: str) -> bytes:
    bucket, key = split_s3(uri)

    def _get() -> bytes:
        try:
            return client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if retry.error_code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"no such object: {uri}") from exc
            raise

    return _retried(_get, f"get {uri}")


def download_file(uri: str, dest: str) -> None:
    """Stream one object to a local file (parallel ranged GETs for large objects)."""
    bucket, key = split_s3(uri)
    once = TransferConfig(num_download_attempts=1)  # a broken stream is retried by retry.call, whole
    _retried(lambda: client().download_file(bucket, key, dest, Config=once), f"download {uri}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write (or replace) an object whole; multipart above `S3Settings.multipart_threshold`."""
    bucket, key = split_s3(uri)
    threshold = s3_settings().multipart_threshold
    if len(data) < threshold:
        _retried(lambda: client().put_object(Bucket=bucket, Key=key, Body=data), f"put {uri}")
        return
    cfg = TransferConfig(multipart_threshold=threshold, multipart_chunksize=upload_part_size(len(data)))
    _retried(lambda: client().upload_fileobj(io.BytesIO(data), bucket, key, Config=cfg), f"put {uri}")


def delete(uri: str) -> None:
    bucket, key = split_s3(uri)
    _retried(lambda: client().delete_object(Bucket=bucket, Key=key), f"delete {uri}")


def delete_prefix(uri: str) -> None:
    """Delete every object under the prefix, 1,000 keys per request."""
    prefix_uri = as_prefix(uri)
    bucket, _ = split_s3(prefix_uri)
    keys = [split_s3(r.uri)[1] for r in list_objects(prefix_uri)]
    for i in range(0, len(keys), 1000):
        batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
        resp = _retried(lambda: client().delete_objects(Bucket=bucket, Delete=batch), f"delete_prefix {prefix_uri}")
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise OSError(f"could not delete s3://{bucket}/{first.get('Key')}: {first.get('Message')}")
