"""Request dependencies: the store, and the caller's token (401 when missing or unknown)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.api.errors import ApiError
from jobs.service.auth import Principal, authenticate
from jobs.service.store.job_store import Store

bearer = HTTPBearer(auto_error=False, description="a token from `llmbatch tokens create`")


def get_store(request: Request) -> Store:
    return request.app.state.store


def principal(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    challenge = {"WWW-Authenticate": "Bearer"}
    if creds is None or creds.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", headers=challenge)
    found = authenticate(request.app.state.store, creds.credentials)
    if found is None:
        raise ApiError(401, "unknown or revoked token", headers=challenge)
    request.state.principal = found.name
    return found
