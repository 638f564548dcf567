"""Count the HTTP requests a boto3 client sends, and answer some of them with an injected error.

A `before-send` hook sees every request botocore is about to put on the wire, retries included,
so the count is exactly what reached (or tried to reach) the store; a hook that returns a
response short-circuits the send, so an error can be injected without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from botocore.awsrequest import AWSResponse


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


@dataclass(frozen=True)
class Reply:
    """An answer in place of the store's: an S3 error code for status >= 300, else headers only."""

    status: int
    code: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, url: str) -> AWSResponse:
        body = f"<Error><Code>{self.code}</Code><Message>{self.code}</Message></Error>" if self.status >= 300 else ""
        return AWSResponse(url, self.status, {"Content-Type": "application/xml", **self.headers}, _Body(body.encode()))


Answer = Callable[[str, int], Reply | None]  # (operation, nth request) -> a reply, or None: send it


class RequestLog:
    """The operations sent, in order (e.g. ["GetObject", "GetObject"])."""

    def __init__(self, answer: Answer):
        self.sent: list[str] = []
        self.answer = answer

    def __call__(self, request, **kwargs):
        operation = kwargs["event_name"].rsplit(".", 1)[-1]
        self.sent.append(operation)
        reply = self.answer(operation, len(self.sent))
        return reply.response(request.url) if reply else None


@contextmanager
def requests_of(client, answer: Answer = lambda op, n: None) -> Iterator[RequestLog]:
    """Record the client's requests while inside; `answer(operation, nth)` may return a Reply
    to answer that request instead of sending it."""
    log = RequestLog(answer)
    client.meta.events.register("before-send.s3", log, unique_id="test-request-log")
    try:
        yield log
    finally:
        client.meta.events.unregister("before-send.s3", unique_id="test-request-log")
