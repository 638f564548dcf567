"""Token lifecycle beyond creation (auth.py): list, revoke, expiry spelling.

Shared by the admin API routes and `llmbatch tokens`, so both see the same fields and the same
audit lines. A listing never holds a secret or its hash: what a token may do, and when it was
made, last used, expires or was revoked.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select, update

from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import tokens

PUBLIC_FIELDS = ("name", "input_prefixes", "output_prefixes", "admin", "created_at", "expires_at",
                 "last_used_at", "revoked_at")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' -> timedelta; ValueError names the rule otherwise."""
    found = _DURATION.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise ValueError(f"'{text}' is not a duration: a positive number followed by s, m, h, d or w (e.g. 30d)")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def expires_at(expires_in: str | None, now: datetime | None = None) -> datetime | None:
    return None if expires_in is None else (now or utcnow()) + parse_duration(expires_in)


def list_tokens(store: Store) -> list[dict]:
    """Every token, oldest first, with PUBLIC_FIELDS only."""
    cols = [tokens.c[name] for name in PUBLIC_FIELDS]
    with store.engine.connect() as conn:
        rows = conn.execute(select(*cols).order_by(tokens.c.created_at, tokens.c.name)).mappings()
        return [dict(r) for r in rows]


def get_token(store: Store, name: str) -> dict | None:
    return next((t for t in list_tokens(store) if t["name"] == name), None)


class UnknownToken(Exception):
    """No token has this name."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no token named '{name}'")

    def __reduce__(self):
        return (type(self), (self.name,))


def revoke_token(store: Store, name: str, *, actor: str) -> tuple[dict, bool]:
    """Revoke `name` from now on; returns (its listing, whether this call revoked it). Audited.
    A second revoke changes nothing (revoked_at keeps its first time)."""
    now = utcnow()
    with store.engine.begin() as conn:
        changed = conn.execute(update(tokens).where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
                               .values(revoked_at=now)).rowcount
    token = get_token(store, name)
    if token is None:
        raise UnknownToken(name)
    store.audit(actor, "token_revoke", None, {"token": name, "outcome": "revoked" if changed else "already"})
    return token, bool(changed)


def describe(token: dict, now: datetime | None = None) -> str:
    """One line for the CLI: name, scopes, admin, dates, status."""
    now = now or utcnow()
    if token["revoked_at"] is not None:
        status = f"revoked {token['revoked_at']:%Y-%m-%d %H:%M}"
    elif token["expires_at"] is not None and token["expires_at"] <= now:
        status = f"expired {token['expires_at']:%Y-%m-%d %H:%M}"
    else:
        status = "active"

    def when(v):
        return f"{v:%Y-%m-%d %H:%M}" if v is not None else "-"

    return (f"{token['name']}\t{status}\tadmin={'yes' if token['admin'] else 'no'}"
            f"\tread={','.join(token['input_prefixes'])}\twrite={','.join(token['output_prefixes'])}"
            f"\tcreated={when(token['created_at'])}\texpires={when(token['expires_at'])}"
            f"\tlast_used={when(token['last_used_at'])}")
