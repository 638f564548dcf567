"""One retry layer, counted on the wire against the loopback S3 server: a stopped store gets
exactly one request per attempt, and a create-if-absent whose first request landed (its answer
lost) is reported as created, not as a lost race."""

from __future__ import annotations

import pytest
from botocore.exceptions import ConnectionClosedError
from structlog.testing import capture_logs

from cluster import storage
from cluster.storage import s3
from tests.support.s3_faults import requests_of

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def test_a_stopped_store_gets_one_request_per_attempt(s3_bucket, moto_server, monkeypatch):
    monkeypatch.setenv("LLMBATCH_S3_RETRY_SECONDS", "2")
    uri = f"s3://{s3_bucket}/x.txt"
    moto_server.stop()
    try:
        with capture_logs() as logs, requests_of(s3.client()) as sent:
            with pytest.raises(Exception, match="(?i)connect"):
                storage.put_if_absent(uri, b"x")
    finally:
        moto_server.restart()
    retries = [e for e in logs if e["event"] == "storage.retry"]
    assert len(retries) >= 2  # it kept trying for its budget...
    assert sent.sent == ["PutObject"] * (len(retries) + 1)  # ...one request per attempt, no more


def test_a_create_whose_answer_was_lost_is_not_a_lost_race(s3_bucket, monkeypatch):
    uri = f"s3://{s3_bucket}/part-0000.parquet"
    client = s3.client()
    real_put = client.put_object
    answers_lost = []

    def put_then_lose_the_answer(**kwargs):
        response = real_put(**kwargs)  # the object lands...
        if not answers_lost:
            answers_lost.append(kwargs["Key"])
            raise ConnectionClosedError(endpoint_url="loopback")  # ...but the answer never arrives
        return response

    monkeypatch.setattr(client, "put_object", put_then_lose_the_answer)
    assert storage.put_if_absent(uri, b"ours") is True  # the retry's 412 is our own object
    assert answers_lost == ["part-0000.parquet"]
    assert storage.put_if_absent(uri, b"theirs") is False  # a real second writer still loses
    assert storage.read_bytes(uri) == b"ours"
