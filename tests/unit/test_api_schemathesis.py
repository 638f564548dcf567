"""Property-based tests of the API from its own OpenAPI document (schemathesis): whatever the
generated request, the service answers without a 5xx and within its documented responses.

The schema is the app's own (`app.openapi()`): /openapi.json is served only with `serve --docs`.
Every operation is driven with a tenant token, the admin operations once more with an admin one."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.api.app import create_app  # noqa: E402
from jobs.service.auth import create_token  # noqa: E402
from jobs.service.store.job_store import Store  # noqa: E402


@pytest.fixture(scope="module")
def app_and_token(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    store = Store(f"sqlite:///{tmp}/jobs.db")
    token = create_token(store, "fuzzer", input_prefixes=["*"], output_prefixes=[str(tmp / "out")])
    admin = create_token(store, "schemathesis-admin-7f3a", input_prefixes=["*"], output_prefixes=["*"], admin=True)
    return create_app(store, auth_failures_per_minute=10**6), token, admin


@pytest.fixture(scope="module")
def api_schema(app_and_token):
    app = app_and_token[0]
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.app = app  # calls go to the app in-process, as from_asgi would set up
    return schema


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_server_errors(api_schema, app_and_token):
    # Each operation gets its own bounded hypothesis run (schemathesis's pytest plugin does
    # not support this pytest version, so the strategies are driven directly).
    _, token, admin = app_and_token
    operations = [op.ok() for op in api_schema.get_all_operations()]
    assert len(operations) >= 9
    admin_ops = [op for op in operations if op.path.startswith(("/v1/tokens", "/v1/audit"))]
    assert len(admin_ops) == 3
    for operation, token in [(op, token) for op in operations] + [(op, admin) for op in admin_ops]:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def run(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

        run()


def test_unauthenticated_requests_get_401_everywhere(api_schema, app_and_token):
    from fastapi.testclient import TestClient

    client = TestClient(app_and_token[0])
    for op in api_schema.get_all_operations():
        operation = op.ok()
        if operation.path == "/healthz":  # public: load balancers probe it without a token
            continue
        path = operation.path.replace("{job_id}", "job-x").replace("{schedule_id}", "sch-x").replace("{name}", "t")
        r = client.request(operation.method.upper(), path)
        assert r.status_code == 401, (operation.method, path, r.status_code)
