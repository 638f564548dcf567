"""The local-filesystem backend: plain paths and `file://` URIs (see cluster.storage.backend).

Writes go to a temp file beside the target first, so a reader (or a crash) never sees a part.
"""

from __future__ import annotations

import glob as globlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from cluster.storage.backend import FileRef
from cluster.storage.uri import has_glob, is_hidden, local_path


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.LocalFileSystem(), local_path(uri)


def list_files(uri: str, suffix: str) -> list[FileRef]:
    path = local_path(uri)
    if has_glob(uri):
        paths = [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
    elif os.path.isdir(path):
        paths = [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(suffix) and not is_hidden(name)
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


def exists(uri: str) -> bool:
    return os.path.exists(local_path(uri))


def list_names(uri: str) -> list[str]:
    path = local_path(uri)
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(uri: str) -> bytes:
    return Path(local_path(uri)).read_bytes()


def _write_temp(final_path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(final_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final_path), prefix=".tmp-", suffix=f"-{uuid.uuid4().hex[:8]}")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_bytes(uri: str, data: bytes) -> None:
    path = local_path(uri)
    os.replace(_write_temp(path, data), path)


def put_if_absent(uri: str, data: bytes) -> bool:
    """A hard link of a fully written temp file fails atomically if the name exists."""
    path = local_path(uri)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def delete(uri: str) -> None:
    try:
        os.unlink(local_path(uri))
    except FileNotFoundError:
        pass


def delete_prefix(uri: str) -> None:
    shutil.rmtree(local_path(uri), ignore_errors=True)
