"""URIs -> filesystems, listing, reads and atomic writes, the same for local paths and S3.

Everything above this package speaks URIs ("out/run1", "/data/x.parquet", "s3://bucket/key").
Each function here picks the backend for the URI's scheme (cluster.storage.local or
cluster.storage.s3, both a cluster.storage.backend.Backend) and delegates to it. S3 settings are
an explicit `S3Settings` (cluster.storage.settings) that drivers pass to the actors they start.
"""

from __future__ import annotations

import pyarrow.fs as pafs

from cluster.storage import local, s3
from cluster.storage.backend import Backend, FileRef
from cluster.storage.settings import S3Settings, s3_settings, use_s3_settings
from cluster.storage.uri import is_s3, join, normalize

__all__ = [
    "Backend", "FileRef", "S3Settings", "backend_for", "delete", "delete_prefix", "exists", "filesystem",
    "is_s3", "join", "list_files", "list_names", "normalize", "put_if_absent", "read_bytes", "s3_settings",
    "use_s3_settings", "write_bytes",
]


def backend_for(uri: str) -> Backend:
    return s3 if is_s3(uri) else local


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for reading Parquet."""
    return backend_for(uri).filesystem(uri)


def list_files(uri: str | list[str], suffix: str = ".parquet") -> list[FileRef]:
    """Files named by a file, a folder/prefix, a glob, or a list of those; sorted, de-duplicated."""
    uris = [uri] if isinstance(uri, str) else list(uri)
    found: dict[str, FileRef] = {}
    for one in uris:
        refs = backend_for(one).list_files(one, suffix)
        if not refs:
            raise FileNotFoundError(f"no {suffix} files found at {one}")
        for ref in refs:
            found[ref.uri] = ref
    return [found[k] for k in sorted(found)]


def exists(uri: str) -> bool:
    return backend_for(uri).exists(uri)


def list_names(uri: str) -> list[str]:
    """Names of the objects directly inside a folder/prefix (empty if it does not exist)."""
    return backend_for(uri).list_names(uri)


def read_bytes(uri: str) -> bytes:
    return backend_for(uri).read_bytes(uri)


def write_bytes(uri: str, data: bytes) -> None:
    """Write (or replace) an object whole: readers see the old or the new content, never a part."""
    backend_for(uri).write_bytes(uri, data)


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create an object only if none exists; True if this call created it.

    This is the commit point of a shard: two attempts racing on one shard commit exactly once.
    """
    return backend_for(uri).put_if_absent(uri, data)


def delete(uri: str) -> None:
    backend_for(uri).delete(uri)


def delete_prefix(uri: str) -> None:
    """Remove a folder/prefix and everything in it (used by `mode: overwrite`)."""
    backend_for(uri).delete_prefix(uri)
