"""An S3-compatible server on loopback (moto's server mode) that can be stopped and restarted.

Clients reach it only through its endpoint URL (boto3 and pyarrow, unpatched). Stopping it
closes the listening socket and every open connection, so clients see a real outage
(connection refused / reset); the objects survive because moto keeps them in this process.

Loaded by tests/conftest.py: a test asks for the `moto_server` or `s3_bucket` fixture by name.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import uuid

import pytest
from moto.server import DomainDispatcherApplication, MotoRequestHandler, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server

from cluster.storage import s3
from tests.support.ports import free_port


class _Tracking(MotoRequestHandler):
    """Remembers open connections so stop() can cut them (keep-alive would outlive shutdown)."""

    open_conns: set = set()
    lock = threading.Lock()

    def setup(self):
        super().setup()
        with self.lock:
            self.open_conns.add(self.connection)

    def log_request(self, *args, **kwargs):  # one line per request drowns the test output
        pass

    def finish(self):
        with self.lock:
            self.open_conns.discard(self.connection)
        super().finish()


class RestartableMotoServer(ThreadedMotoServer):
    def __init__(self, port: int):
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{port}"

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=_Tracking)
        self._server_ready_event.set()
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop accepting, close the port, and reset every open connection."""
        if not self._server_ready_event.is_set():  # already stopped
            return
        super().stop()
        self._server.server_close()
        with _Tracking.lock:
            conns = list(_Tracking.open_conns)
            _Tracking.open_conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass

    def restart(self) -> None:
        self._server_ready_event.clear()
        self.start()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Outage tests stop the server for ~20 s; each call keeps retrying for longer than that.
    "LLMBATCH_S3_RETRY_SECONDS": "90",
}


_SHARED: RestartableMotoServer | None = None


def shared_server() -> RestartableMotoServer:
    """One server per test process, however many modules import the fixture (each import would
    otherwise make its own session fixture, and the env can point at only one endpoint)."""
    global _SHARED
    if _SHARED is None:
        server = RestartableMotoServer(free_port())
        server.start()
        os.environ.update(S3_ENV)
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        atexit.register(server.stop)
        _SHARED = server
    return _SHARED


@pytest.fixture(scope="session")
def moto_server():
    """The running server; AWS_ENDPOINT_URL and test credentials are set for this process."""
    return shared_server()


@pytest.fixture
def s3_bucket(moto_server) -> str:
    """A fresh, empty bucket for one test; returns its name."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name
