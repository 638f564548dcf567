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
from datetime import datetime, timedelta

from sqlalchemy import and_, insert, or_, select, update

from cluster.storage.scope import Scope, canonical_prefix
from jobs.manifest import parse_manifest
from jobs.manifest.uri_fields import scope_violations
from jobs.service.store.job_store import Store, utcnow
from jobs.service.store.tables import tokens

TOKEN_PREFIX = "llmb_"
LAST_USED_EVERY = timedelta(minutes=1)


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
                 admin: bool = False, expires_at: datetime | None = None, actor: str = "cli") -> str:
    """Record a new token and return its secret (the only time it exists in clear); audited."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    read = [canonical_prefix(p) for p in input_prefixes]
    write = [canonical_prefix(p) for p in output_prefixes]
    with store.engine.begin() as conn:
        conn.execute(insert(tokens).values(
            id=uuid.uuid4().hex, name=name, token_hash=hash_token(secret), input_prefixes=read,
            output_prefixes=write, admin=admin, created_at=utcnow(), expires_at=expires_at))
    store.audit(actor, "token_create", None, {"token": name, "input_prefixes": read, "output_prefixes": write,
                                              "admin": admin, "expires_at": expires_at and expires_at.isoformat()})
    return secret


def _live(now: datetime):
    """Not revoked and not expired: the only tokens that authenticate or run schedules."""
    return and_(tokens.c.revoked_at.is_(None), or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now))


def authenticate(store: Store, secret: str | None) -> Principal | None:
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    digest, now = hash_token(secret), utcnow()
    with store.engine.connect() as conn:
        row = conn.execute(select(tokens).where(tokens.c.token_hash == digest, _live(now))).mappings().first()
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    last = row["last_used_at"]
    if last is None or now - last >= LAST_USED_EVERY:  # at most one write a minute per token
        with store.engine.begin() as conn:
            conn.execute(update(tokens).where(tokens.c.id == row["id"]).values(last_used_at=now))
    return Principal(row["name"], tuple(row["input_prefixes"]), tuple(row["output_prefixes"]), bool(row["admin"]))


def uri_violations(principal: Principal, manifest) -> list[tuple[str, str]]:
    """(field path, message) for every location the manifest names that the token may not use:
    input, output, model, tokenizer, training data, checkpoint, references, ... (each field marked
    in the schema, see jobs.manifest.uri_fields). `manifest`: parsed, or the raw mapping."""
    if isinstance(manifest, dict):
        manifest = parse_manifest(manifest)
    return scope_violations(principal.scope, manifest)


def principal_by_name(store: Store, name: str) -> Principal | None:
    """The live token called `name` (schedules run with their creator's current rights)."""
    with store.engine.connect() as conn:
        q = select(tokens).where(tokens.c.name == name, _live(utcnow()))
        row = conn.execute(q).mappings().first()
    if row is None:
        return None
    return Principal(row["name"], tuple(row["input_prefixes"]), tuple(row["output_prefixes"]), bool(row["admin"]))
