"""Bearer tokens: stored as SHA-256 hashes, each allowed to read and write only under its prefixes.

Tokens are 32 random bytes, so a plain SHA-256 is enough (no salt or slow hash needed: nothing
to brute-force). The secret is shown once, by `llmbatch tokens create`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import insert, select

from cluster import storage
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import tokens

TOKEN_PREFIX = "llmb_"
ANY = "*"  # a prefix that allows every URI


@dataclass(frozen=True)
class Principal:
    name: str
    input_prefixes: tuple[str, ...]
    output_prefixes: tuple[str, ...]
    admin: bool = False


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: Store, name: str, *, input_prefixes: list[str], output_prefixes: list[str],
                 admin: bool = False) -> str:
    """Record a new token and return its secret (the only time it exists in clear)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with store.engine.begin() as conn:
        conn.execute(insert(tokens).values(
            id=uuid.uuid4().hex, name=name, token_hash=hash_token(secret),
            input_prefixes=[_canon_prefix(p) for p in input_prefixes],
            output_prefixes=[_canon_prefix(p) for p in output_prefixes],
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


def _canon(uri: str) -> str:
    """Folder form of a URI for prefix checks: "s3://b/x/", "/real/abs/path/". A prefix matches
    whole path segments only ("s3://data" does not allow "s3://data-other"); local paths are
    resolved ("..", symlinks) so they cannot step outside."""
    if storage.is_s3(uri):
        return uri.rstrip("/") + "/"
    return os.path.realpath(storage.normalize(uri)).rstrip("/") + "/"


def _canon_prefix(prefix: str) -> str:
    return ANY if prefix == ANY else _canon(prefix)


def _within(uri: str, prefixes: tuple[str, ...]) -> bool:
    if ANY in prefixes:
        return True
    if storage.is_s3(uri) and ".." in uri.split("/"):
        return False
    target = _canon(uri)
    return any(target.startswith(p) for p in prefixes)


def uri_violations(principal: Principal, manifest: dict) -> list[tuple[str, str]]:
    """(field path, message) for every input/output URI outside the token's prefixes."""
    out: list[tuple[str, str]] = []
    inp = (manifest.get("input") or {}).get("uri")
    uris = [inp] if isinstance(inp, str) else list(inp or [])
    for i, uri in enumerate(uris):
        if isinstance(uri, str) and not _within(uri, principal.input_prefixes):
            path = "input.uri" if isinstance(inp, str) else f"input.uri[{i}]"
            out.append((path, f"token '{principal.name}' may not read {uri}"))
    out_uri = (manifest.get("output") or {}).get("uri")
    if isinstance(out_uri, str) and not _within(out_uri, principal.output_prefixes):
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
