"""Retry transient object-storage failures with capped, jittered exponential backoff.

botocore and pyarrow retry each request a bounded number of times with short backoffs; a store
that is down for tens of seconds (a restart, a failover) outlasts them. This wraps a whole call
in a deadline-bounded loop on top, so a job rides out an outage and still fails, with the last
error, when the store stays down.
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable, TypeVar

import structlog

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


def deadline_s() -> float:
    """How long one call keeps retrying before giving up (LLMBATCH_S3_RETRY_SECONDS, default 90)."""
    return float(os.environ.get("LLMBATCH_S3_RETRY_SECONDS", "90"))


def is_transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        ClientError = BotoConnectionError = HTTPClientError = ()  # type: ignore[assignment]
    if isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return err.get("Code") in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, OSError):  # pyarrow raises OSError with the SDK's message
        text = str(exc).lower()
        return any(s in text for s in _TRANSIENT_TEXT)
    return False


def call(fn: Callable[[], T], *, what: str, deadline: float | None = None) -> T:
    """Run fn(), retrying transient failures until `deadline` seconds have passed."""
    limit = deadline_s() if deadline is None else deadline
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            attempt += 1
            elapsed = time.monotonic() - start
            if not is_transient(exc) or elapsed >= limit:
                raise
            delay = min(8.0, 0.25 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2)
            delay = min(delay, max(0.1, limit - elapsed))
            log.warning("storage.retry", what=what, attempt=attempt, delay_s=round(delay, 2), error=str(exc)[:300])
            time.sleep(delay)
