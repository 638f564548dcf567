"""Bearer tokens: stored as SHA-256 hashes, each allowed to read and write only under its prefixes.

Tokens are 32 random bytes, so a plain SHA-256 is enough (no salt or slow hash needed: nothing
to brute-force). The secret is shown once, by `llmbatch tokens create`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select

from cluster.storage.scope import Scope, canonical_prefix, within
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import tokens

TOKEN_PREFIX = "llmb_"


@dataclass(frozen=True)
class Principal:
    name: str
    input_prefixes: tuple[str, ...]
    output_prefixes: tuple[str, ...]
    admin: bool = False

    @property
    def scope(self) -> Scope:
        """What this token's jobs may read and write, carried to the runner and its actors."""
        return Scope(read=self.input_prefixes, write=self.output_prefixes, who=f"token '{self.name}'")


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: Store, name: str, *, input_prefixes: list[str], output_prefixes: list[str],
                 admin: bool = False) -> str:
    """Record a new token and return its secret (the only time it exists in clear)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.engine.begin() as conn:
        conn.execute(insert(tokens).values(
            id=uuid.uuid4().hex, name=name, token_hash=hash_token(secret),
            input_prefixes=[canonical_prefix(p) for p in input_prefixes],
            output_prefixes=[canonical_prefix(p) for p in output_prefixes],
            admin=admin, created_at=utcnow()))
    return secret


def authenticate(store: Store, secret: str | None) -> Principal | None:
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest = hash_token(secret)
    with store.engine.connect() as conn:
        row = conn.execute(select(tokens).where(tokens.c.token_hash == digest,
                                                tokens.c.revoked_at.is_(None))).mappings().first()
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return Principal(row["name"], tuple(row["input_prefixes"]), tuple(row["output_prefixes"]), bool(row["admin"]))


def uri_violations(principal: Principal, manifest: dict) -> list[tuple[str, str]]:
    """(field path, message) for every input/output URI outside the token's prefixes."""
    out: list[tuple[str, str]] = []
    inp = (manifest.get("input") or {}).get("uri")
    uris = [inp] if isinstance(inp, str) else list(inp or [])
    for i, uri in enumerate(uris):
        if isinstance(uri, str) and not within(uri, principal.input_prefixes):
            path = "input.uri" if isinstance(inp, str) else f"input.uri[{i}]"
            out.append((path, f"token '{principal.name}' may not read {uri}"))
    out_uri = (manifest.get("output") or {}).get("uri")
    if isinstance(out_uri, str) and not within(out_uri, principal.output_prefixes):
        out.append(("output.uri", f"token '{principal.name}' may not write {out_uri}"))
    return out


def principal_by_name(store: Store, name: str) -> Principal | None:
    """The live token called `name` (schedules run with their creator's current rights)."""
    with store.engine.connect() as conn:
        q = select(tokens).where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
        row = conn.execute(q).mappings().first()
    if row is None:
        return None
    return Principal(row["name"], tuple(row["input_prefixes"]), tuple(row["output_prefixes"]), bool(row["admin"]))
