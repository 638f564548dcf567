"""S3 models in the node cache, keyed by content (the loopback S3 server): a model re-published to
the same URI is fetched again into a new entry at the next resolve, a job's planned identity is
re-checked at each resolve, and the cache keeps to its size cap by evicting the least recently
used entry, never the one just resolved."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cluster.model_cache import cache_usage, models_dir, usage
from cluster.model_cache.download import write_checksums
from cluster.storage import s3
from workers.model_identity import ModelChanged, ModelNotFound, identity_digest, model_identity
from workers.model_resolver import resolve_model

pytestmark = [pytest.mark.integration, pytest.mark.s3]

WEIGHT_BYTES = 300_000


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMBATCH_CACHE_MAX_GB", raising=False)
    return tmp_path / "cache"


def publish(uri: str, weights: bytes, *, checksums: bool = True, **extra: bytes) -> None:
    """Upload a model folder to `uri` (replacing the objects of the same names)."""
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": weights, **extra}
    if checksums:
        files["_checksums.json"] = json.dumps({n: hashlib.sha256(d).hexdigest() for n, d in files.items()}).encode()
    for name, data in files.items():
        s3.write_bytes(f"{uri}/{name}", data)


def test_identity_lists_etags_and_sizes_and_refuses_what_is_not_a_model(s3_bucket):
    uri = f"s3://{s3_bucket}/models/m"
    publish(uri, b"w" * 100, checksums=False, **{"sub/notes.txt": b"x"})
    identity = model_identity(uri + "/")
    assert identity["kind"] == "s3" and identity["uri"] == uri
    assert sorted(identity["files"]) == ["config.json", "model.safetensors", "sub/notes.txt"]
    assert identity["files"]["model.safetensors"].endswith(":100")
    s3.write_bytes(f"s3://{s3_bucket}/models/no-weights/config.json", b"{}")
    with pytest.raises(ModelNotFound, match="no .safetensors or .gguf weights"):
        model_identity(f"s3://{s3_bucket}/models/no-weights")
    s3.write_bytes(f"s3://{s3_bucket}/models/no-config/model.safetensors", b"w")
    with pytest.raises(ModelNotFound, match="no config.json"):
        model_identity(f"s3://{s3_bucket}/models/no-config")
    with pytest.raises(ModelNotFound, match="does not exist"):
        model_identity(f"s3://{s3_bucket}/models/none")


def test_a_republished_model_is_fetched_again_and_the_planned_identity_is_checked(s3_bucket):
    uri = f"s3://{s3_bucket}/models/m"
    first_weights, second_weights = os.urandom(WEIGHT_BYTES), os.urandom(WEIGHT_BYTES)
    publish(uri, first_weights)
    planned = model_identity(uri)
    first = resolve_model(uri, expect=planned)
    assert first == models_dir() / "s3" / identity_digest(planned)
    assert (first / "model.safetensors").read_bytes() == first_weights
    assert resolve_model(uri) == first  # warm: the same entry, nothing fetched

    publish(uri, second_weights)  # same URI, new content
    with pytest.raises(ModelChanged, match=rf"model {uri} changed since the job started: "
                                           r"_checksums.json etag \w+ \(\d+ bytes\) -> \w+ .*model.safetensors etag"):
        resolve_model(uri, expect=planned)
    assert sorted(p.name for p in (models_dir() / "s3").iterdir()) == [first.name]  # refused before fetching

    second = resolve_model(uri)  # a new job: the warm node picks up the new weights
    assert second != first and (second / "model.safetensors").read_bytes() == second_weights
    assert (first / "model.safetensors").read_bytes() == first_weights  # the old entry is untouched
    assert resolve_model(uri, expect=model_identity(uri)) == second


def _resolve_in_child(cache: str, uris: list[str], queue) -> None:
    os.environ["LLMBATCH_CACHE"] = cache
    try:
        queue.put([str(resolve_model(uri)) for uri in uris])
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


def test_the_least_recently_used_entry_is_evicted_past_the_cap(s3_bucket, cache, monkeypatch):
    uris = [f"s3://{s3_bucket}/models/{name}" for name in ("a", "b", "c")]
    for uri in uris:
        publish(uri, os.urandom(WEIGHT_BYTES))
    # a and b resolved by an earlier actor that has exited (its hold on them ended with it)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_resolve_in_child, args=(str(cache), uris[:2], queue))
    child.start()
    result = queue.get(timeout=120)
    child.join(60)
    assert isinstance(result, list), result
    entry_a, entry_b = map(Path, result)
    when = usage.last_used(entry_b) - 60
    os.utime(usage._record(entry_a), (when, when))  # a was used a minute before b

    monkeypatch.setenv("LLMBATCH_CACHE_MAX_GB", str(2.5 * WEIGHT_BYTES / 1e9))  # room for two
    with capture_logs() as events:
        entry_c = resolve_model(uris[2])
    assert not entry_a.exists() and entry_b.is_dir() and entry_c.is_dir()
    evicted = [e for e in events if e["event"] == "model_cache.evicted"]
    assert [(e["entry"], e["ref"]) for e in evicted] == [(f"s3/{entry_a.name}", uris[0])]
    report = cache_usage()
    assert [e["ref"] for e in report["entries"]] == [uris[1], uris[2]]
    assert report["total_bytes"] <= report["max_bytes"]

    assert resolve_model(uris[0]) == entry_a and entry_a.is_dir()  # fetched again when asked for
    assert entry_c.is_dir()  # held by this process (it resolved c): b went instead
    assert not entry_b.exists()
