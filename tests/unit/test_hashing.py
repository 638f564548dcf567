"""cluster.hashing: digests that ids depend on keep their exact values (resume matches on them)."""

from __future__ import annotations

import hashlib

from cluster.hashing import file_digest, stable_json, stable_json_sha256, text_sha256


def test_file_digest_matches_hashlib_for_any_algorithm(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000  # more than one read block
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(path, "md5") == hashlib.md5(data).hexdigest()


def test_text_and_json_hashes_are_pinned():
    # Shard ids are text_sha256(key)[:20]; manifest hashes are stable_json_sha256(model_dump).
    assert text_sha256("s3://b/in/a.parquet|120|etag|0-50")[:20] == "7b1db3ceb933efddb42a"
    assert stable_json({"b": 1, "a": [1, "x"]}) == '{"a": [1, "x"], "b": 1}'
    assert stable_json_sha256({"b": 1, "a": [1, "x"]}) == stable_json_sha256({"a": [1, "x"], "b": 1})
    assert stable_json_sha256({"a": 1}) == hashlib.sha256(b'{"a": 1}').hexdigest()
