"""What a storage backend offers: the operations every URI scheme implements the same way.

`cluster.storage.local` and `cluster.storage.s3` are modules that satisfy `Backend`;
`cluster.storage` picks one per URI, so callers never branch on the scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow.fs as pafs


@dataclass(frozen=True)
class FileRef:
    """One stored file. `version` changes when the content may have changed (mtime or etag)."""

    uri: str
    size: int
    version: str


class Backend(Protocol):
    """Reads, atomic writes and listings for one URI scheme."""

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the path inside it, for reading and writing Parquet."""

    def list_files(self, uri: str, suffix: str) -> list[FileRef]:
        """Files named by a file, a folder/prefix (recursively, hidden names skipped) or a glob."""

    def exists(self, uri: str) -> bool: ...

    def list_names(self, uri: str) -> list[str]:
        """Names of the objects directly inside a folder/prefix (empty if it does not exist)."""

    def read_bytes(self, uri: str) -> bytes:
        """The whole object; FileNotFoundError if there is none."""

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write or replace an object whole: readers see the old or the new content, never a part."""

    def put_if_absent(self, uri: str, data: bytes) -> bool:
        """Create an object only if none exists, atomically; True if this call created it."""

    def delete(self, uri: str) -> None:
        """Remove one object; no error if it is already gone."""

    def delete_prefix(self, uri: str) -> None:
        """Remove a folder/prefix and everything in it."""
