"""cluster.storage.retry: which failures are retried, for how long, and by one layer only
(requests are counted on the wire of a botocore client; no server needed)."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from structlog.testing import capture_logs

from cluster import storage
from cluster.storage import retry, s3
from cluster.storage.s3_conditional import TOKEN_KEY
from tests.support.s3_faults import Reply, requests_of


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


@pytest.fixture
def unreachable_store(monkeypatch):
    """S3 settings with a short retry budget, installed for this process; restored after."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    storage.use_s3_settings(storage.S3Settings(endpoint_url="http://127.0.0.1:9", addressing_style="path",
                                               retry_seconds=0.6))
    yield s3.client()
    storage.use_s3_settings(None)


def test_botocore_does_not_retry_on_its_own(unreachable_store):
    assert unreachable_store.meta.config.retries["total_max_attempts"] == 1


@pytest.mark.parametrize("call", [
    lambda: storage.read_bytes("s3://b/k"),
    lambda: storage.write_bytes("s3://b/k", b"x"),
    lambda: storage.exists("s3://b/k"),
    lambda: storage.list_names("s3://b/dir"),
    lambda: storage.put_if_absent("s3://b/k", b"x"),
    lambda: s3.download_file("s3://b/k", "/nonexistent/dest"),
], ids=["read", "write", "head", "list", "put_if_absent", "download"])
def test_every_attempt_is_exactly_one_request(unreachable_store, call):
    """A store that keeps answering 503: each attempt of the retry layer is one request on the
    wire. A second layer (botocore's retries, s3transfer's, a loop around retry.call) would
    multiply the requests per attempt."""
    with capture_logs() as logs, requests_of(unreachable_store, lambda op, n: Reply(503, "SlowDown")) as sent:
        with pytest.raises(ClientError, match="SlowDown"):
            call()
    retries = [e for e in logs if e["event"] == "storage.retry"]
    assert len(retries) >= 1
    assert len(sent.sent) == len(retries) + 1, sent.sent


def test_a_lost_race_on_the_first_request_needs_no_lookup(unreachable_store):
    with requests_of(unreachable_store, lambda op, n: Reply(412, "PreconditionFailed")) as sent:
        assert storage.put_if_absent("s3://b/k", b"x") is False
    assert sent.sent == ["PutObject"]


def test_a_conflict_is_asked_again_and_a_later_412_checks_whose_object_it_is(unreachable_store):
    """409 (a concurrent conditional write in flight): ask again. A 412 after a retry may answer
    our own first request that landed: the stored object's token says whose it is."""
    answers = {1: Reply(409, "ConditionalRequestConflict"), 2: Reply(412, "PreconditionFailed"),
               3: Reply(200, headers={f"x-amz-meta-{TOKEN_KEY}": "another-writer", "Content-Length": "1"})}
    with requests_of(unreachable_store, lambda op, n: answers.get(n, Reply(500, "unexpected"))) as sent:
        assert storage.put_if_absent("s3://b/k", b"x") is False
    assert sent.sent == ["PutObject", "PutObject", "HeadObject"]
