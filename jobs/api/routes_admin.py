"""Admin routes: the tokens (list, revoke) and the audit log. Every route needs an admin token.

A token listing never carries a secret or its hash. Revocation is audited with the admin who did
it; creation is audited where it happens (`llmbatch tokens create`, on the store).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from jobs.api.deps import admin, get_store
from jobs.api.errors import ApiError
from jobs.api.models import ErrorResponse
from jobs.service.auth import Principal
from jobs.service.store.job_store import Store
from jobs.service.tokens import UnknownToken, list_tokens, revoke_token

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 429)}
router = APIRouter(prefix="/v1", responses=ERRORS)
StoreDep = Annotated[Store, Depends(get_store)]
Admin = Annotated[Principal, Depends(admin)]


class TokenOut(BaseModel):
    name: str
    input_prefixes: list[str]
    output_prefixes: list[str]
    admin: bool
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenList(BaseModel):
    tokens: list[TokenOut]


class AuditLine(BaseModel):
    seq: int
    at: datetime
    actor: str
    action: str
    job_id: str | None = None
    detail: dict[str, Any] | None = None


class AuditPage(BaseModel):
    lines: list[AuditLine]
    next_before: int | None = None  # pass as `before` for the next (older) page; None: no more


@router.get("/tokens", response_model=TokenList, summary="All tokens (admin): scopes and dates, never secrets")
def tokens_list(store: StoreDep, _who: Admin):
    return {"tokens": list_tokens(store)}


@router.post("/tokens/{name}/revoke", response_model=TokenOut, summary="Revoke a token (admin), audited")
def tokens_revoke(name: Annotated[str, Path(min_length=1, max_length=128)], store: StoreDep, who: Admin):
    try:
        token, _changed = revoke_token(store, name, actor=who.name)
    except UnknownToken as exc:
        raise ApiError(404, str(exc)) from None
    return token


@router.get("/audit", response_model=AuditPage, summary="The audit log (admin), newest first, paginated")
def audit(store: StoreDep, _who: Admin,
          before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
          actor: Annotated[str | None, Query(max_length=128)] = None,
          limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    lines = store.audit_lines(limit, before=before, actor=actor)
    more = len(lines) == limit and lines[-1]["seq"] > 1
    return {"lines": lines, "next_before": lines[-1]["seq"] if more else None}
