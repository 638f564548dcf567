"""Request dependencies: the store, and the caller's token (401 when missing, unknown, expired or
revoked; 429 once the client address failed too often, see auth_limit.py); admin-only routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobs.api.errors import ApiError
from jobs.service.auth import Principal, authenticate
from jobs.service.store.job_store import Store

bearer = HTTPBearer(auto_error=False, description="a token from `llmbatch tokens create`")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_store(request: Request) -> Store:
    return request.app.state.store


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse(request: Request, message: str) -> ApiError:
    request.app.state.auth_failures.failed(_address(request))
    return ApiError(401, message, headers=CHALLENGE)


def optional_principal(request: Request,
                       creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal | None:
    """The caller, or None when no Authorization header was sent; a bad one is still refused."""
    if creds is None and "authorization" not in request.headers:
        return None
    return principal(request, creds)


def principal(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    wait = request.app.state.auth_failures.retry_after(_address(request))
    if wait is not None:
        raise ApiError(429, f"too many failed authentications from this address; retry in {wait} s",
                       [("header.Authorization", "failed too often in the last minute")],
                       headers={"Retry-After": str(wait)})
    if creds is None or creds.scheme.lower() != "bearer":
        raise _refuse(request, "missing bearer token (Authorization: Bearer <token>)")
    found = authenticate(request.app.state.store, creds.credentials)
    if found is None:
        raise _refuse(request, "unknown, expired or revoked token")
    request.state.principal = found.name
    return found


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise ApiError(403, f"token '{who.name}' is not an admin token; this route is for admins only")
    return who
