"""cluster.storage.retry: which failures are retried, and for how long (no server needed)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cluster.storage import retry
def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize("exc, transient", [
    (_client_error("SlowDown", 503), True),
    (_client_error("InternalError", 500), True),
    (_client_error("TooManyRequests", 429), True),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Couldn't connect to server"), True),
    (_client_error("PreconditionFailed", 412), False),
    (_client_error("AccessDenied", 403), False),
    (_client_error("NoSuchKey", 404), False),
    (FileNotFoundError("no such object"), False),
])
def test_classification(exc, transient):
    assert retry.is_transient(exc) is transient


def test_transient_failures_are_retried_until_success():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _client_error("SlowDown", 503)
        return "ok"

    assert retry.call(flaky, what="test", deadline=30) == "ok"
    assert len(calls) == 3


def test_permanent_failures_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise _client_error("AccessDenied", 403)

    with pytest.raises(ClientError, match="AccessDenied"):
        retry.call(denied, what="test", deadline=30)
    assert len(calls) == 1


def test_gives_up_after_the_deadline_with_the_last_error():
    t0 = time.monotonic()
    with pytest.raises(ClientError, match="SlowDown"):
        retry.call(lambda: (_ for _ in ()).throw(_client_error("SlowDown", 503)), what="test", deadline=1.0)
    assert 0.9 <= time.monotonic() - t0 < 5
