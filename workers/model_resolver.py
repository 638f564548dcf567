"""A manifest's `model:` reference -> a canonical model folder on this node.

`builtin:NAME` is fetched and converted once into the node's model cache; `s3://...` folders
are downloaded into a cache entry named by their content (each object's ETag and size, one
listing per resolve), so a model re-published to the same URI gets a new entry and every node
picks it up at its next job start; local folders are used in place. Several actors on one node
may ask at once: a node-wide lock makes exactly one of them do the work. The cache keeps within
its size cap by evicting least-recently-used entries (cluster.model_cache).

`expect` is the identity the job's driver computed before the job started
(workers.model_identity): when the model is no longer that one, `ModelChanged` says what
changed instead of the worker running other weights than the job was planned with.

A local or S3 folder is checked against the job's scope (cluster.storage, the process's scope
unless one is passed): the folder resolved with symlinks, and every file in it, so a model
folder of one tenant cannot hold a symlink to another tenant's file or to /etc. The engines
(llm_core, which knows nothing of scopes) open the files after this check.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from cluster import model_cache, storage
from cluster.model_cache.download import download_folder
from cluster.model_cache.entry import use_entry
from cluster.storage.scope import Scope
from llm_core.weights import builtin
from workers.model_identity import (
    ModelChanged,
    ModelNotFound,
    builtin_identity,
    check_unchanged,
    identity_digest,
    local_folder,
    local_identity,
    s3_identity,
)

__all__ = ["ModelChanged", "ModelNotFound", "resolve_model"]

log = structlog.get_logger()


def _check_folder(path: Path, ref: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"model {ref!r}: {path} is not a model folder (no config.json)")
    return path


def _fetch_builtin(name: str, ref: str, dest: Path) -> None:
    with model_cache.node_lock(f"model-{name}"):
        if not (dest / "config.json").is_file():
            log.info("model.fetch_builtin", model=ref, dest=str(dest))
            builtin.fetch_and_convert(name, dest)
            log.info("model.ready", model=ref, dest=str(dest))


def resolve_model(ref: str, scope: Scope | None = None, expect: dict | None = None) -> Path:
    """The folder of the model `ref` on this node, fetched into the cache if needed.

    expect: the model's identity as the job's driver computed it (model_identity); a model
    that changed since raises ModelChanged naming what changed.
    """
    name = builtin.builtin_name(ref)
    if name is not None:
        check_unchanged(ref, expect, builtin_identity(name))  # unknown names fail before any lock
        dest = model_cache.models_dir() / name
        return _check_folder(use_entry(dest, ref, lambda d: _fetch_builtin(name, ref, d)), ref)
    scope = scope or storage.current_scope()
    if storage.is_s3(ref):
        identity, listing = s3_identity(ref, scope, need="config")  # the re-check at each job start
        check_unchanged(ref, expect, identity)
        dest = model_cache.models_dir() / "s3" / identity_digest(identity)
        return _check_folder(use_entry(dest, ref, lambda d: download_folder(ref, d, listing)), ref)
    if expect is None:  # nothing to compare: no need to hash the files
        return _check_folder(local_folder(ref, scope), ref)
    identity = local_identity(ref, scope, need="config")
    check_unchanged(ref, expect, identity)
    return Path(identity["path"])
