"""sha256 of local model files, computed once per file version and remembered on the node.

A model's identity (workers.model_identity) hashes its weight files, and every job start checks
it: a 1 GB file must not be read again each time. The digest is memoized in the node cache
(`hashes/`) under the file's real path, size, mtime_ns and inode, so any rewrite of the file
(new mtime or size, or a new file renamed over it) is hashed afresh, while an untouched file is
never read twice, by any process on the node.
"""

from __future__ import annotations

import os
from pathlib import Path

from cluster.hashing import file_digest, text_sha256
from cluster.model_cache.paths import cache_subdir


def _version(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _memo(real: str, version: tuple[int, int, int]) -> Path:
    size, mtime_ns, ino = version
    key = text_sha256(f"{real}\n{size}\n{mtime_ns}\n{ino}")[:40]
    return cache_subdir("hashes") / key[:2] / key


def memo_file(path: str | Path) -> Path:
    """Where the digest of the file's current version is (or would be) remembered."""
    real = os.path.realpath(path)
    return _memo(real, _version(os.stat(real)))


def memoized_sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read from the memo when this version was hashed before."""
    real = os.path.realpath(path)
    before = _version(os.stat(real))
    memo = _memo(real, before)
    try:
        cached = memo.read_text().strip()
        if len(cached) == 64:
            return cached
    except FileNotFoundError:
        pass
    digest = file_digest(real, "sha256")
    if _version(os.stat(real)) == before:  # not rewritten while we read it: safe to remember
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(digest)
        os.replace(tmp, memo)
    return digest
