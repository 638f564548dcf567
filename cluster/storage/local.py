"""The local-filesystem backend: plain paths and `file://` URIs (see cluster.storage.backend).

Writes go to a temp file beside the target first, so a reader (or a crash) never sees a part.

Every operation takes the job's `Scope` and checks it where the file is opened, not only at
submit: a path is resolved (symlinks included) right before the open, the final component is
opened with O_NOFOLLOW, and the opened file's (or folder's) real path is checked again through
`/proc/self/fd/N`. A read therefore never reads a file outside the scope even when a symlink is
swapped in between the check and the open; writes and deletes work relative to a folder
descriptor that was checked after it was opened, so the folder cannot be swapped either. Only
`os.makedirs` of missing parent folders runs before that last check (it may create an empty
folder through a symlink swapped in at that instant, never a file).
"""

from __future__ import annotations

import contextlib
import errno
import glob as globlib
import os
import shutil
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from cluster.storage.backend import FileRef
from cluster.storage.scope import Scope, ScopeError
from cluster.storage.uri import has_glob, is_hidden, local_path

_UNRESTRICTED = Scope.unrestricted()


def _fd_path(fd: int, fallback: str) -> str:
    """The real path of an open file or folder (Linux: its /proc link; elsewhere realpath)."""
    link = f"/proc/self/fd/{fd}"
    try:
        return os.readlink(link)
    except OSError:
        return os.path.realpath(fallback)


def _open_nofollow(uri: str, real: str, flags: int, scope: Scope, action: str) -> int:
    """Open the already-resolved `real` path without following a symlink swapped in since."""
    try:
        fd = os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the resolved name became a symlink after the check
            raise ScopeError(uri, action, scope.who) from None
        raise
    try:
        scope.check(action, uri, _fd_path(fd, real))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _checked_read_fd(uri: str, scope: Scope | None) -> int:
    scope = scope or _UNRESTRICTED
    real = os.path.realpath(local_path(uri))
    scope.check("read", uri, real)
    return _open_nofollow(uri, real, os.O_RDONLY, scope, "read")


def filesystem(uri: str, scope: Scope | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for the path, checked now (prefer `open_input`, checked at open)."""
    path = local_path(uri)
    (scope or _UNRESTRICTED).check("read", uri, os.path.realpath(path))
    return pafs.LocalFileSystem(), path


def open_input(uri: str, scope: Scope | None = None) -> pa.NativeFile:
    """A readable file whose real path was checked after it was opened."""
    fd = _checked_read_fd(uri, scope)
    proc = f"/proc/self/fd/{fd}"
    try:
        if os.path.exists(proc):  # reopen the very inode we checked, as a native Arrow file
            return pa.OSFile(proc, mode="r")
        return pa.PythonFile(os.fdopen(os.dup(fd), "rb"), mode="r")
    finally:
        os.close(fd)


def _listed(uri: str, suffix: str) -> list[str]:
    path = local_path(uri)
    if has_glob(uri):
        return [p for p in globlib.glob(path, recursive=True) if os.path.isfile(p)]
    if os.path.isdir(path):  # os.walk never descends into symlinked folders
        return [
            os.path.join(root, name)
            for root, _, names in os.walk(path)
            for name in names
            if name.endswith(suffix) and not is_hidden(name)
        ]
    return [path] if os.path.isfile(path) else []


def list_files(uri: str, suffix: str, scope: Scope | None = None) -> list[FileRef]:
    """The files named; a listed file whose real path is outside the scope (a symlink out of
    it) is refused before anything opens or stats it."""
    scope = scope or _UNRESTRICTED
    refs = []
    for p in _listed(uri, suffix):
        scope.check("read", p, os.path.realpath(p))
        st = os.stat(p)
        refs.append(FileRef(uri=p, size=st.st_size, version=str(st.st_mtime_ns)))
    return refs


def exists(uri: str, scope: Scope | None = None) -> bool:
    path = local_path(uri)
    (scope or _UNRESTRICTED).check("read", uri, os.path.realpath(path))
    return os.path.exists(path)


def list_names(uri: str, scope: Scope | None = None) -> list[str]:
    path = local_path(uri)
    (scope or _UNRESTRICTED).check("read", uri, os.path.realpath(path))
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_bytes(uri: str, scope: Scope | None = None) -> bytes:
    with os.fdopen(_checked_read_fd(uri, scope), "rb") as f:
        return f.read()


def _parent_fd(uri: str, scope: Scope | None, create: bool = True) -> tuple[int, str]:
    """A descriptor of the target's folder, checked after opening, and the target's name.

    The target itself is checked resolved too: a name that is now a symlink out of the scope
    (a part path swapped for a link into another tenant's folder) is refused, not replaced."""
    scope = scope or _UNRESTRICTED
    path = local_path(uri)
    parent, name = os.path.split(path.rstrip("/"))
    scope.check("write", uri, os.path.realpath(path))
    real_parent = os.path.realpath(parent)
    if create:
        os.makedirs(real_parent, exist_ok=True)
    dfd = _open_nofollow(uri, real_parent, os.O_RDONLY | os.O_DIRECTORY, scope, "write")
    return dfd, name


def _write_temp(dfd: int, name: str, data: bytes) -> str:
    tmp = f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_bytes(uri: str, data: bytes, scope: Scope | None = None) -> None:
    dfd, name = _parent_fd(uri, scope)
    try:  # rename replaces a name, never writes through a symlink
        os.replace(_write_temp(dfd, name, data), name, src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def put_if_absent(uri: str, data: bytes, scope: Scope | None = None) -> bool:
    """A hard link of a fully written temp file fails atomically if the name exists."""
    dfd, name = _parent_fd(uri, scope)
    try:
        tmp = _write_temp(dfd, name, data)
        try:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp, dir_fd=dfd)
    finally:
        os.close(dfd)


def _in_parent(uri: str, scope: Scope | None, op) -> None:
    """`op(name, folder_fd)` in the target's checked folder; nothing when that folder is gone."""
    try:
        dfd, name = _parent_fd(uri, scope, create=False)
    except FileNotFoundError:
        return
    try:
        op(name, dfd)
    finally:
        os.close(dfd)


def _unlink(name: str, dfd: int) -> None:
    with contextlib.suppress(FileNotFoundError):  # already gone
        os.unlink(name, dir_fd=dfd)  # removes a symlink itself, never its target


def delete(uri: str, scope: Scope | None = None) -> None:
    _in_parent(uri, scope, _unlink)


def delete_prefix(uri: str, scope: Scope | None = None) -> None:
    # rmtree by descriptor: it never follows a symlink, at the top or inside.
    _in_parent(uri, scope, lambda name, dfd: shutil.rmtree(name, dir_fd=dfd, ignore_errors=True))
