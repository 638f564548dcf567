"""Create-if-absent on S3: the commit point of a shard, exactly once however many attempts race.

The condition (`If-None-Match: *`) is checked by the store atomically with the write. Answers:
412 = an object is already there; 409 = a concurrent conditional write is in flight, so ask
again (the next answer is 412, or a win if that write failed). A request retried after its
answer was lost (connection reset, timeout) may itself have landed: its retry answers 412 too.
Each write carries a random token in its metadata, so a 412 after a retry is checked against
the stored object: our own token means this call created it, not that it lost a race.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog
from botocore.exceptions import ClientError

from cluster.storage import retry
from cluster.storage.s3_client import client
from cluster.storage.settings import s3_settings
from cluster.storage.uri import split_s3

log = structlog.get_logger()

TOKEN_KEY = "llmbatch-commit"  # user metadata (x-amz-meta-llmbatch-commit) naming the writing call
_PART_MIN = 8 * 1024 * 1024
_MAX_PARTS = 9_000  # S3 allows 10,000 parts of at least 5 MiB each


def upload_part_size(total: int) -> int:
    return max(_PART_MIN, -(-total // _MAX_PARTS))


def _precondition_failed(exc: BaseException) -> bool:
    return retry.http_status(exc) == 412 or retry.error_code(exc) == "PreconditionFailed"


def _conflict(exc: BaseException) -> bool:
    return retry.http_status(exc) == 409 or retry.error_code(exc) == "ConditionalRequestConflict"


def _retry_conditional(exc: BaseException) -> bool:
    return retry.is_transient(exc) or _conflict(exc)


def _retried(fn: Callable, what: str):
    return retry.call(fn, what=what, deadline=s3_settings().retry_seconds)


class _Counted:
    """The conditional request and how many times it was sent (once per retry.call attempt)."""

    def __init__(self, request: Callable):
        self.request, self.sent = request, 0

    def __call__(self):
        self.sent += 1
        return self.request()


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create the object only if no object has that key; True if this call created it."""
    bucket, key = split_s3(uri)
    settings = s3_settings()
    token = uuid.uuid4().hex
    upload = None
    if len(data) < settings.multipart_threshold:
        send = _Counted(lambda: client().put_object(
            Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", Metadata={TOKEN_KEY: token}))
    else:
        upload = _MultipartUpload(bucket, key, token)
        upload.send_parts(data)
        send = _Counted(upload.complete_if_absent)
    created = False
    try:
        retry.call(send, what=f"put_if_absent {uri}", deadline=settings.retry_seconds, retry_if=_retry_conditional)
        created = True
    except ClientError as exc:
        if not _precondition_failed(exc):
            raise
        created = send.sent > 1 and _stored_token(bucket, key) == token
    finally:
        if upload is not None and not created:
            upload.abort()  # no half object and no dangling upload
    return created


def _stored_token(bucket: str, key: str) -> str | None:
    return _retried(lambda: client().head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(TOKEN_KEY),
                    f"head s3://{bucket}/{key}")


class _MultipartUpload:
    """A multipart upload whose completion is conditional: the object appears whole, or not at all."""

    def __init__(self, bucket: str, key: str, token: str):
        self.bucket, self.key = bucket, key
        self.upload_id = _retried(lambda: client().create_multipart_upload(
            Bucket=bucket, Key=key, Metadata={TOKEN_KEY: token})["UploadId"], f"mpu {key}")
        self.parts: list[dict] = []

    def send_parts(self, data: bytes) -> None:
        size = upload_part_size(len(data))
        try:
            for n, off in enumerate(range(0, len(data), size), start=1):
                chunk = data[off : off + size]
                etag = _retried(lambda: client().upload_part(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=n, Body=chunk)["ETag"],
                    f"upload_part {self.key}#{n}")
                self.parts.append({"PartNumber": n, "ETag": etag})
        except BaseException:
            self.abort()
            raise

    def complete_if_absent(self):
        return client().complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts}, IfNoneMatch="*")

    def abort(self) -> None:
        try:
            client().abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: BLE001 - best effort; a lifecycle rule reaps leftovers
            log.warning("s3.abort_failed", key=self.key, upload_id=self.upload_id)
