"""A manifest's `adapter:` (a LoRA adapter folder in PEFT layout) -> its identity and a folder on this node.

Adapters are resolved the way models are (workers.model_identity, workers.model_resolver): a
local folder is checked against the job's scope (resolved with symlinks, and every file in it)
and used in place; an S3 prefix is downloaded into the node's model cache under an entry named by
its content, so an adapter re-published to the same URI gets a new entry. Its identity hashes the
files that decide what it computes (the same shape as a model's: {"kind": "local", "path",
"files": {name: sha256}} or {"kind": "s3", "uri", "files": {key: "<etag>:<size>"}}); the run
fingerprint holds it, and a worker given the identity pre-flight computed refuses an adapter that
changed since, naming it.
"""

from __future__ import annotations

from pathlib import Path

from cluster import model_cache, storage
from cluster.model_cache.download import download_folder
from cluster.model_cache.entry import use_entry
from cluster.model_cache.file_hashes import memoized_sha256
from cluster.storage import s3
from cluster.storage.backend import FileRef
from cluster.storage.scope import Scope
from llm_core.models.classifier import CLASSIFIER_FILE, LABELS_FILE
from workers import model_check
from workers.model_identity import ModelChanged, check_local_scope, identity_changes, identity_digest

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# What an adapter folder holds that decides its outputs (a README or a log beside them changes nothing).
ADAPTER_FILES = frozenset({ADAPTER_CONFIG, ADAPTER_WEIGHTS, CLASSIFIER_FILE, LABELS_FILE})
PICKLED_ADAPTER = "adapter_model.bin"  # PEFT's old pickle format: never loaded
CACHE_SUBDIR = "adapters"


class AdapterNotFound(FileNotFoundError):
    pass


class AdapterChanged(ModelChanged):
    """The adapter behind a reference is not the one the job was planned with."""


def folder_problem(ref: str, names: set[str]) -> str | None:
    """Why a folder whose top-level file names are `names` is not an adapter folder, or None."""
    if ADAPTER_CONFIG not in names:
        return f"adapter {ref} is not an adapter folder (no {ADAPTER_CONFIG})"
    if ADAPTER_WEIGHTS not in names:
        if PICKLED_ADAPTER in names:
            return (f"adapter {ref} holds only {PICKLED_ADAPTER} (pickle): llmbatch loads adapters only from "
                    f"{ADAPTER_WEIGHTS} (save it with safe_serialization=True)")
        return f"adapter {ref} is not an adapter folder (no {ADAPTER_WEIGHTS})"
    if (CLASSIFIER_FILE in names) != (LABELS_FILE in names):
        have, missing = (CLASSIFIER_FILE, LABELS_FILE) if CLASSIFIER_FILE in names else (LABELS_FILE, CLASSIFIER_FILE)
        return f"adapter {ref} has {have} but no {missing} (a classification adapter needs both)"
    return None


def adapter_identity(ref: str, scope: Scope | None = None) -> dict:
    """The identity of the adapter folder `ref` (local path or s3:// prefix); AdapterNotFound when
    it is not one, ScopeError when the folder or a file in it is outside the scope."""
    scope = scope or storage.current_scope()
    if storage.is_s3(ref):
        return s3_adapter_identity(ref, scope)[0]
    return local_adapter_identity(ref, scope)


def local_adapter_identity(ref: str, scope: Scope) -> dict:
    path = Path(ref).expanduser()
    if not path.exists():
        raise AdapterNotFound(f"adapter {ref!r} not found (expected a local folder or an s3:// prefix)")
    if not path.is_dir():
        raise AdapterNotFound(f"adapter {ref!r} is not a folder (an adapter is a folder with {ADAPTER_CONFIG})")
    check_local_scope(path, ref, scope)
    folder = path.resolve()
    names = {p.name for p in folder.iterdir() if p.is_file()}
    problem = folder_problem(ref, names)
    if problem is not None:
        raise AdapterNotFound(problem)
    files = {name: memoized_sha256(folder / name) for name in sorted(names & ADAPTER_FILES)}
    return {"kind": "local", "path": str(folder), "files": files}


def s3_adapter_identity(ref: str, scope: Scope) -> tuple[dict, list[FileRef]]:
    """The identity of an S3 adapter folder and the listing it was computed from (downloaded as is)."""
    scope.check("read", ref)
    prefix = ref.rstrip("/") + "/"
    try:
        listing = [r for r in s3.list_objects(prefix) if not r.uri.endswith("/")]
    except model_check.LISTING_ERRORS as exc:
        raise AdapterNotFound(f"adapter {model_check.unlistable(ref, exc)}") from None
    if not listing:
        raise AdapterNotFound(f"adapter {model_check.no_objects(ref)}")
    files = {r.uri[len(prefix):]: f"{r.version}:{r.size}" for r in listing}
    problem = folder_problem(ref, {name for name in files if "/" not in name})
    if problem is not None:
        raise AdapterNotFound(problem)
    return {"kind": "s3", "uri": ref.rstrip("/"), "files": files}, listing


def check_adapter_unchanged(ref: str, expect: dict | None, current: dict) -> None:
    """Raise AdapterChanged when `current` is not the identity `expect`ed (None: nothing to check)."""
    if expect is None or identity_digest(expect) == identity_digest(current):
        return
    changes = identity_changes(expect, current) or ["identity differs"]
    raise AdapterChanged(f"adapter {ref} changed since the job started: {'; '.join(changes)}")


def resolve_adapter(ref: str, scope: Scope | None = None, expect: dict | None = None) -> Path:
    """The adapter folder on this node: a local folder in place, an S3 one downloaded into the
    cache (entry named by its content). `expect`: the identity pre-flight computed."""
    scope = scope or storage.current_scope()
    if storage.is_s3(ref):
        identity, listing = s3_adapter_identity(ref, scope)
        check_adapter_unchanged(ref, expect, identity)
        dest = model_cache.models_dir() / CACHE_SUBDIR / identity_digest(identity)
        return use_entry(dest, ref, lambda d: download_folder(ref, d, listing))
    identity = local_adapter_identity(ref, scope)
    check_adapter_unchanged(ref, expect, identity)
    return Path(identity["path"])


def is_classification_adapter(folder: Path) -> bool:
    """An adapter exported by a classification fine-tune: it carries the head and its labels."""
    return (folder / CLASSIFIER_FILE).is_file() and (folder / LABELS_FILE).is_file()
