"""URIs -> filesystems, listing, reads and atomic writes, the same for local paths and S3.

Everything above this package speaks URIs ("out/run1", "/data/x.parquet", "s3://bucket/key").
Each function here picks the backend for the URI's scheme (cluster.storage.local or
cluster.storage.s3, both a cluster.storage.backend.Backend) and delegates to it. S3 settings are
an explicit `S3Settings` (cluster.storage.settings) that drivers pass to the actors they start.

Every function also checks a `Scope` (cluster.storage.scope) at the moment it touches storage:
the one passed as `scope=`, else the scope this process runs under (`use_scope`, set once by the
job's runner actor and by each actor it starts; unrestricted by default, as for `llmbatch run`).
S3 URIs are checked by prefix here; local paths are checked by the local backend on the real
path of the file it opened, so a symlink never leads a job out of its scope.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from cluster.storage import local, s3
from cluster.storage.backend import Backend, FileRef
from cluster.storage.scope import Scope, ScopeError
from cluster.storage.settings import S3Settings, s3_settings, use_s3_settings
from cluster.storage.uri import is_s3, join, normalize

__all__ = [
    "Backend", "FileRef", "S3Settings", "Scope", "ScopeError", "backend_for", "current_scope", "delete",
    "delete_prefix", "exists", "filesystem", "is_s3", "join", "list_files", "list_names", "normalize",
    "open_input", "put_if_absent", "read_bytes", "s3_settings", "scoped", "use_s3_settings", "use_scope",
    "write_bytes",
]

_scope = Scope.unrestricted()


def use_scope(scope: Scope | None) -> None:
    """The scope of this process from now on (None: unrestricted)."""
    global _scope
    _scope = scope or Scope.unrestricted()


def current_scope() -> Scope:
    return _scope


@contextlib.contextmanager
def scoped(scope: Scope | None) -> Iterator[Scope]:
    """Run a block under `scope` (None: keep the current one), then restore the previous one."""
    previous = _scope
    use_scope(scope or previous)
    try:
        yield _scope
    finally:
        use_scope(previous)


def _s3(uri: str, action: str, scope: Scope | None) -> bool:
    """True for an S3 URI, after checking it by prefix (S3 has no symlinks)."""
    if not is_s3(uri):
        return False
    (scope or _scope).check(action, uri)
    return True


def backend_for(uri: str) -> Backend:
    return s3 if is_s3(uri) else local


def filesystem(uri: str, scope: Scope | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, checked for reading now (prefer
    `open_input`, which checks the file it opened)."""
    if _s3(uri, "read", scope):
        return s3.filesystem(uri)
    return local.filesystem(uri, scope or _scope)


def open_input(uri: str, scope: Scope | None = None) -> pa.NativeFile:
    """One file opened for reading (Parquet readers take it), checked at open."""
    if _s3(uri, "read", scope):
        fs, path = s3.filesystem(uri)
        return fs.open_input_file(path)
    return local.open_input(uri, scope or _scope)


def list_files(uri: str | list[str], suffix: str = ".parquet", scope: Scope | None = None) -> list[FileRef]:
    """Files named by a file, a folder/prefix, a glob, or a list of those; sorted, de-duplicated.
    A listed file outside the scope (a symlink out of it) raises ScopeError naming it."""
    uris = [uri] if isinstance(uri, str) else list(uri)
    found: dict[str, FileRef] = {}
    for one in uris:
        if _s3(one, "read", scope):
            refs = s3.list_files(one, suffix)
            for ref in refs:
                (scope or _scope).check("read", ref.uri)
        else:
            refs = local.list_files(one, suffix, scope or _scope)
        if not refs:
            raise FileNotFoundError(f"no {suffix} files found at {one}")
        for ref in refs:
            found[ref.uri] = ref
    return [found[k] for k in sorted(found)]


def exists(uri: str, scope: Scope | None = None) -> bool:
    return s3.exists(uri) if _s3(uri, "read", scope) else local.exists(uri, scope or _scope)


def list_names(uri: str, scope: Scope | None = None) -> list[str]:
    """Names of the objects directly inside a folder/prefix (empty if it does not exist)."""
    return s3.list_names(uri) if _s3(uri, "read", scope) else local.list_names(uri, scope or _scope)


def read_bytes(uri: str, scope: Scope | None = None) -> bytes:
    return s3.read_bytes(uri) if _s3(uri, "read", scope) else local.read_bytes(uri, scope or _scope)


def write_bytes(uri: str, data: bytes, scope: Scope | None = None) -> None:
    """Write (or replace) an object whole: readers see the old or the new content, never a part."""
    if _s3(uri, "write", scope):
        s3.write_bytes(uri, data)
    else:
        local.write_bytes(uri, data, scope or _scope)


def put_if_absent(uri: str, data: bytes, scope: Scope | None = None) -> bool:
    """Create an object only if none exists; True if this call created it.

    This is the commit point of a shard: two attempts racing on one shard commit exactly once.
    """
    if _s3(uri, "write", scope):
        return s3.put_if_absent(uri, data)
    return local.put_if_absent(uri, data, scope or _scope)


def delete(uri: str, scope: Scope | None = None) -> None:
    if _s3(uri, "write", scope):
        s3.delete(uri)
    else:
        local.delete(uri, scope or _scope)


def delete_prefix(uri: str, scope: Scope | None = None) -> None:
    """Remove a folder/prefix and everything in it (used by `mode: overwrite`)."""
    if _s3(uri, "write", scope):
        s3.delete_prefix(uri)
    else:
        local.delete_prefix(uri, scope or _scope)
