"""A manifest's `model:` reference -> a canonical model folder on this node.

`builtin:NAME` is fetched and converted once into the node's model cache; `s3://...` folders
are downloaded once per node; local folders are used in place. Several actors on one node may
ask at once: a node-wide lock makes exactly one of them do the work.

A local or S3 folder is checked against the job's scope (cluster.storage, the process's scope
unless one is passed): the folder resolved with symlinks, and every file in it, so a model
folder of one tenant cannot hold a symlink to another tenant's file or to /etc. The engines
(llm_core, which knows nothing of scopes) open the files after this check.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from cluster import model_cache, storage
from cluster.storage.scope import Scope
from llm_core.weights import builtin

log = structlog.get_logger()


class ModelNotFound(FileNotFoundError):
    pass


def _check_folder(path: Path, ref: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"model {ref!r}: {path} is not a model folder (no config.json)")
    return path


def _check_scope(path: Path, ref: str, scope: Scope) -> None:
    """The folder and every file under it (symlinked folders are not entered) may be read."""
    scope.check("read", ref, os.path.realpath(path))
    for root, _, names in os.walk(path):
        for name in names:
            file = os.path.join(root, name)
            scope.check("read", file, os.path.realpath(file))


def resolve_model(ref: str, scope: Scope | None = None) -> Path:
    name = builtin.builtin_name(ref)
    if name is not None:
        builtin.lookup(name)  # unknown names fail before any lock or download
        dest = model_cache.models_dir() / name
        if (dest / "config.json").is_file():
            return dest
        with model_cache.node_lock(f"model-{name}"):
            if not (dest / "config.json").is_file():
                log.info("model.fetch_builtin", model=ref, dest=str(dest))
                builtin.fetch_and_convert(name, dest)
                log.info("model.ready", model=ref, dest=str(dest))
        return dest
    scope = scope or storage.current_scope()
    if storage.is_s3(ref):
        scope.check("read", ref)
        from cluster.model_cache.download import download_folder

        safe = ref[len("s3://") :].strip("/").replace("/", "__")
        return _check_folder(download_folder(ref, model_cache.models_dir() / "s3" / safe), ref)
    path = Path(os.path.expanduser(ref))
    if not path.exists():
        raise ModelNotFound(f"model {ref!r} not found (expected builtin:NAME, s3://... or a local folder)")
    _check_scope(path, ref, scope)
    return _check_folder(path.resolve(), ref)
