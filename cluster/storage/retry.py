"""The one retry layer for S3 object calls: capped, jittered exponential backoff under a deadline.

botocore's clients are built with its own retries off (cluster.storage.s3_client), so a call
here is exactly one HTTP request per attempt and attempts never multiply. Why not botocore's
retries instead: its standard and adaptive modes share a retry quota per client (500 tokens,
14 per retry) that is built to stop retrying during a long outage, and count attempts rather
than time; a store restart of 20-90 s must be ridden out by every concurrent call, then a call
must still fail, with the last error, when the store stays down. pyarrow's Parquet reads are
another path with one layer of their own (the AWS C++ SDK's, `S3Settings.pyarrow_max_attempts`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError

log = structlog.get_logger()

T = TypeVar("T")

# Throttling and server-side codes S3 (and S3-compatible stores) return for "try again later".
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
# Substrings of pyarrow/AWS C++ SDK error messages for the same conditions.
_TRANSIENT_TEXT = (
    "connection refused",
    "couldn't connect",
    "could not connect",
    "failed to connect",
    "connection reset",
    "connection was closed",
    "timed out",
    "timeout",
    "curlcode",
    "network",
    "slowdown",
    "slow down",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "http response code: 5",
    "http response code 5",
)
# Unreachable, reset, timed out, or a body cut short (s3transfer reports that as RetriesExceeded).
_TRANSPORT_ERRORS = (BotoConnectionError, HTTPClientError, IncompleteReadError, RetriesExceededError,
                     ConnectionError, TimeoutError)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", ""))


def http_status(exc: BaseException) -> int:
    resp = getattr(exc, "response", None) or {}
    return int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(exc: BaseException) -> bool:
    """Worth asking again: the store is unreachable, overloaded or failing, not refusing."""
    if isinstance(exc, _TRANSPORT_ERRORS):
        return True
    if isinstance(exc, ClientError):
        status = http_status(exc)
        return error_code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, OSError):  # pyarrow raises OSError with the SDK's message
        text = str(exc).lower()
        return any(s in text for s in _TRANSIENT_TEXT)
    return False


def call(fn: Callable[[], T], *, what: str, deadline: float,
         retry_if: Callable[[BaseException], bool] = is_transient) -> T:
    """Run fn(), asking again while `retry_if` says so and `deadline` seconds have not passed."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            attempt += 1
            elapsed = time.monotonic() - start
            if not retry_if(exc) or elapsed >= deadline:
                raise
            delay = min(8.0, 0.25 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2)
            delay = min(delay, max(0.1, deadline - elapsed))
            log.warning("storage.retry", what=what, attempt=attempt, delay_s=round(delay, 2), error=str(exc)[:300])
            time.sleep(delay)
