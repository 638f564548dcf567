"""Model folders in S3: downloaded once per node into the cache, verified, safe under concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from cluster.model_cache import download as model_download
from cluster.storage import s3

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def _upload(folder: Path, uri: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.write_bytes(f"{uri}/{p.relative_to(folder).as_posix()}", p.read_bytes())


def _make_folder(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "model.safetensors").write_bytes(os.urandom(300_000))
    (src / "sub" / "extra.txt").write_text("x")
    return src


def _same_tree(a: Path, b: Path) -> bool:
    files = lambda d: {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}  # noqa: E731
    return files(a) == files(b)


def test_download_verifies_checksums_and_is_idempotent(tmp_path, s3_bucket, moto_server):
    src = _make_folder(tmp_path)
    model_download.write_checksums(src)
    uri = f"s3://{s3_bucket}/models/tiny"
    _upload(src, uri)
    dest = tmp_path / "cache" / "tiny"
    assert model_download.download_folder(uri, dest) == dest
    assert _same_tree(src, dest)
    assert not list(dest.parent.glob(".tiny.tmp-*"))
    moto_server.stop()  # a second call needs no S3 at all
    try:
        assert model_download.download_folder(uri, dest) == dest
    finally:
        moto_server.restart()


def test_corrupt_object_is_refused_and_nothing_is_left(tmp_path, s3_bucket):
    src = _make_folder(tmp_path)
    model_download.write_checksums(src)
    (src / "model.safetensors").write_bytes(os.urandom(300_000))  # differs from the recorded sha256
    uri = f"s3://{s3_bucket}/models/bad"
    _upload(src, uri)
    dest = tmp_path / "cache" / "bad"
    with pytest.raises(model_download.ChecksumError, match="model.safetensors"):
        model_download.download_folder(uri, dest)
    assert not dest.exists() and not list(dest.parent.glob(".bad.tmp-*"))


def test_sha256sums_file_and_missing_folder(tmp_path, s3_bucket):
    src = _make_folder(tmp_path)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(src).as_posix()}"
             for p in sorted(src.rglob("*")) if p.is_file()]
    (src / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    (src / "sub" / "extra.txt").unlink()  # listed but absent
    uri = f"s3://{s3_bucket}/models/incomplete"
    _upload(src, uri)
    with pytest.raises(model_download.ChecksumError, match="missing"):
        model_download.download_folder(uri, tmp_path / "cache" / "incomplete")
    with pytest.raises(FileNotFoundError, match="no model files"):
        model_download.download_folder(f"s3://{s3_bucket}/models/none", tmp_path / "cache" / "none")


def _download_in_child(uri: str, dest: str, cache: str, queue) -> None:
    os.environ["LLMBATCH_CACHE"] = cache
    try:
        model_download.download_folder(uri, Path(dest))
        queue.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(repr(exc))


def test_concurrent_processes_download_once(tmp_path, s3_bucket):
    src = _make_folder(tmp_path)  # no checksum file: verified against the MD5 ETags
    uri = f"s3://{s3_bucket}/models/shared"
    _upload(src, uri)
    dest = tmp_path / "cache" / "models" / "shared"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_download_in_child, args=(uri, str(dest), str(tmp_path / "cache"), queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results == ["ok"] * 4
    assert _same_tree(src, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["shared"]  # no leftover temp dirs


def test_a_folder_republished_after_its_listing_is_refused(tmp_path, s3_bucket):
    """The cache files a download under the content of the listing it was given: objects that
    no longer match that listing at the end are refused, not filed under the old content."""
    src = _make_folder(tmp_path)
    uri = f"s3://{s3_bucket}/models/moving"
    _upload(src, uri)
    listing = s3.list_objects(uri + "/")
    dest = tmp_path / "cache" / "moving"
    assert model_download.download_folder(uri, dest, listing) == dest and _same_tree(src, dest)
    s3.write_bytes(f"{uri}/tokenizer.json", b"{}")  # re-published meanwhile: a file more
    dest2 = tmp_path / "cache" / "moving2"
    with pytest.raises(model_download.ChecksumError, match="changed while it was downloaded"):
        model_download.download_folder(uri, dest2, listing)
    s3.write_bytes(f"{uri}/model.safetensors", os.urandom(300_000))  # new weights, same size
    with pytest.raises(model_download.ChecksumError, match="model.safetensors: md5"):
        model_download.download_folder(uri, dest2, listing)
    assert not dest2.exists() and not list(dest2.parent.glob(".moving2.tmp-*"))
