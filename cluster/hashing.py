"""The one home for content hashes: files, text and JSON-able data, all as hex digests.

Ids that resume depends on (manifest hashes, shard ids, model-cache checksums) are built from
these, so their exact spelling matters: changing one changes every id computed with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in blocks (files may be larger than memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def text_sha256(text: str) -> str:
    """sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def stable_json(data: Any) -> str:
    """JSON whose spelling depends only on the content: keys sorted, non-JSON values as str()."""
    return json.dumps(data, sort_keys=True, default=str)


def stable_json_sha256(data: Any) -> str:
    """sha256 of `stable_json(data)`: equal data, equal hash, whatever the key order."""
    return text_sha256(stable_json(data))


DIGEST_CHARS = 32  # 128 bits: an identity digest names model-cache entries, so it must not collide


def short_digest(data: Any) -> str:
    """A short name of a JSON-able identity: sha256 of its canonical JSON, DIGEST_CHARS hex characters.
    Models (workers.model_identity) and the base an adapter records (llm_core.models.lora_files)
    are named by it, and compared by it."""
    return stable_json_sha256(data)[:DIGEST_CHARS]
