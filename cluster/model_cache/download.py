"""Copy a model folder from S3 into this node's model cache, once per node, verified.

Several actors on one node may ask for the same model at the same moment: one downloads under a
node-wide file lock while the others wait, then all see the finished folder. The folder is
assembled in a temp dir beside `dest` and renamed into place, so `dest` existing means complete.
Each file's size is checked against the listing, and its content against the folder's own
checksum file (`_checksums.json` {name: sha256} or `SHA256SUMS` "hex  name" lines) when it has
one, else against the ETag where that is a plain MD5 (single-part uploads).

The model cache keys an S3 entry by the listing it was resolved from (each object's ETag and
size): the caller passes that listing, the objects it names are downloaded, and the prefix is
listed again at the end, so a model re-published during the download is refused instead of
filed under the old content's key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import structlog

from cluster.hashing import file_digest, text_sha256
from cluster.model_cache.paths import node_lock
from cluster.storage import s3
from cluster.storage.backend import FileRef

log = structlog.get_logger()

CHECKSUM_FILES = ("_checksums.json", "SHA256SUMS")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class ChecksumError(ValueError):
    pass


def download_folder(s3_uri: str, dest: Path, listing: list[FileRef] | None = None) -> Path:
    """Make `dest` a verified copy of every object under `s3_uri`; a no-op if it already is.

    listing: the objects under the prefix as the caller saw them (default: listed here); the
    download must end with exactly these objects (same ETags and sizes) still there.
    """
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_name = "model-" + text_sha256(str(dest.resolve()))[:16]
    with node_lock(lock_name):
        if dest.is_dir():  # another process finished it while we waited
            return dest
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _download_into(s3_uri, tmp, listing)
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _objects(prefix: str) -> list[FileRef]:
    return [r for r in s3.list_objects(prefix) if not r.uri.endswith("/")]


def _download_into(s3_uri: str, tmp: Path, listing: list[FileRef] | None) -> None:
    prefix = s3_uri.rstrip("/") + "/"
    refs = _objects(prefix) if listing is None else [r for r in listing if not r.uri.endswith("/")]
    if not refs:
        raise FileNotFoundError(f"no model files under {s3_uri}")
    log.info("model.download", uri=s3_uri, files=len(refs), bytes=sum(r.size for r in refs))
    for ref in refs:
        rel = ref.uri[len(prefix) :]
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ValueError(f"refusing object key outside the folder: {ref.uri}")
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(ref.uri, str(path))
        size = path.stat().st_size
        if size != ref.size:
            raise ChecksumError(f"{ref.uri}: downloaded {size} bytes, the store lists {ref.size}")
    expected = _expected_sha256(tmp)
    for ref in refs:
        rel = ref.uri[len(prefix) :]
        if rel in CHECKSUM_FILES:
            continue
        if expected is not None:
            want = expected.get(rel)
            if want is None:
                raise ChecksumError(f"{ref.uri}: not listed in the folder's checksum file")
            got = file_digest(tmp / rel, "sha256")
            if got != want.lower():
                raise ChecksumError(f"{ref.uri}: sha256 {got} does not match the expected {want}")
        elif _MD5_ETAG.match(ref.version):
            got = file_digest(tmp / rel, "md5")
            if got != ref.version:
                raise ChecksumError(f"{ref.uri}: md5 {got} does not match the ETag {ref.version}")
    if expected is not None:
        missing = sorted(set(expected) - {r.uri[len(prefix) :] for r in refs})
        if missing:
            raise ChecksumError(f"{s3_uri}: files listed in the checksum file are missing: {missing}")
    if listing is not None and _signature(_objects(prefix)) != _signature(refs):
        raise ChecksumError(f"{s3_uri} changed while it was downloaded (re-published?); resolve it again")


def _signature(refs: list[FileRef]) -> set[tuple[str, int, str]]:
    return {(r.uri, r.size, r.version) for r in refs}


def _expected_sha256(folder: Path) -> dict[str, str] | None:
    if (folder / "_checksums.json").is_file():
        data = json.loads((folder / "_checksums.json").read_text())
        return {str(k): str(v) for k, v in data.items()}
    if (folder / "SHA256SUMS").is_file():
        out = {}
        for line in (folder / "SHA256SUMS").read_text().splitlines():
            if line.strip():
                digest, name = line.split(maxsplit=1)
                out[name.lstrip("*").removeprefix("./")] = digest
        return out
    return None


def write_checksums(folder: Path) -> Path:
    """Write `_checksums.json` for a local folder before uploading it (used by training output)."""
    folder = Path(folder)
    sums = {
        p.relative_to(folder).as_posix(): file_digest(p, "sha256")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in CHECKSUM_FILES
    }
    out = folder / "_checksums.json"
    out.write_text(json.dumps(sums, indent=1, sort_keys=True))
    return out
