"""URIs -> filesystems, listing, reads and atomic writes, the same for local paths and S3.

Everything above this module speaks URIs ("out/run1", "/data/x.parquet", "s3://bucket/key").
Local paths are handled here; `s3://` is delegated to cluster.storage.s3 behind the same functions.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


@dataclass(frozen=True)
class FileRef:
    """One input file. `version` changes when the content may have changed (mtime or etag)."""

    uri: str
    size: int
    version: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> str:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return os.path.abspath(os.path.expanduser(uri))


def normalize(uri: str) -> str:
    """Canonical spelling of a URI: absolute for local paths, so ids do not depend on the cwd."""
    return uri.rstrip("/") if is_s3(uri) else _local(uri)


def join(base: str, *names: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(_local(base), *names)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for reading Parquet."""
    if is_s3(uri):
        from cluster.storage import s3
        return s3.filesystem(uri)
    return pafs.LocalFileSystem(), _local(uri)


def list_files(uri: str | list[str], suffix: str = ".parquet") -> list[FileRef]:
    """Files named by a file, a folder/prefix, a glob, or a list of those; sorted, de-duplicated."""
    uris = [uri] if isinstance(uri, str) else list(uri)
    found: dict[str, FileRef] = {}
    for one in uris:
        refs = _list_s3(one, suffix) if is_s3(one) else _list_local(one, suffix)
        if not refs:
            raise FileNotFoundError(f"no {suffix} files found at {one}")
        for ref in refs:
            found[ref.uri] = ref
    return [found[k] for k in sorted(found)]


def _list_local(uri: str, suffix: str) -> list[FileRef]:
    path = _local(uri)
    if any(c in uri for c in "*?["):
        paths = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        paths = [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(suffix) and not name.startswith(("_", "."))
        ]
    elif os.path.isfile(path):
        paths = [path]
    else:
        return []
    refs = []
    for p in paths:
        st = os.stat(p)
        refs.append(FileRef(uri=p, size=st.st_size, version=str(st.st_mtime_ns)))
    return refs


def _list_s3(uri: str, suffix: str) -> list[FileRef]:
    from cluster.storage import s3
    if any(c in uri for c in "*?["):
        prefix = uri[: min(uri.index(c) for c in "*?[" if c in uri)]
        pattern = _glob_regex(uri)
        return [r for r in s3.list_objects(prefix) if pattern.fullmatch(r.uri)]
    refs = s3.list_objects(uri.rstrip("/") + "/")
    if refs:
        return [r for r in refs if r.uri.endswith(suffix) and not Path(r.uri).name.startswith(("_", "."))]
    head = s3.head(uri)
    return [head] if head else []


def _glob_regex(pattern: str) -> "re.Pattern[str]":
    """A glob as the local filesystem reads it: `*` and `?` stay within one path segment,
    `**/` spans any number of them (fnmatch's `*` would also match "/")."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])  # fnmatch's own class syntax
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def exists(uri: str) -> bool:
    if is_s3(uri):
        from cluster.storage import s3
        return s3.head(uri) is not None
    return os.path.exists(_local(uri))


def list_names(uri: str) -> list[str]:
    """Names of the objects directly inside a folder/prefix (empty if it does not exist)."""
    if is_s3(uri):
        from cluster.storage import s3
        prefix = uri.rstrip("/") + "/"
        return sorted(r.uri[len(prefix) :] for r in s3.list_objects(prefix) if "/" not in r.uri[len(prefix) :])
    path = _local(uri)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        from cluster.storage import s3
        return s3.get(uri)
    return Path(_local(uri)).read_bytes()


def _write_temp(final_path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(final_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final_path), prefix=".tmp-", suffix=f"-{uuid.uuid4().hex[:8]}")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_bytes(uri: str, data: bytes) -> None:
    """Write (or replace) an object whole: readers see the old or the new content, never a part."""
    if is_s3(uri):
        from cluster.storage import s3
        s3.put(uri, data)
        return
    path = _local(uri)
    os.replace(_write_temp(path, data), path)


def put_if_absent(uri: str, data: bytes) -> bool:
    """Create an object only if none exists; True if this call created it.

    This is the commit point of a shard: two attempts racing on one shard commit exactly once.
    Locally a hard link of a fully written temp file fails atomically if the name exists.
    """
    if is_s3(uri):
        from cluster.storage import s3
        return s3.put_if_absent(uri, data)
    path = _local(uri)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def delete(uri: str) -> None:
    if is_s3(uri):
        from cluster.storage import s3
        s3.delete(uri)
        return
    try:
        os.unlink(_local(uri))
    except FileNotFoundError:
        pass


def delete_prefix(uri: str) -> None:
    """Remove a folder/prefix and everything in it (used by `mode: overwrite`)."""
    if is_s3(uri):
        from cluster.storage import s3
        s3.delete_prefix(uri.rstrip("/") + "/")
        return
    shutil.rmtree(_local(uri), ignore_errors=True)
