"""The run fingerprint and its diff: what resume compares, and the lines a refusal shows."""

from __future__ import annotations

import json
import os

from cluster import storage
from cluster.storage.backend import FileRef
from workers.output.fingerprint import fingerprint_diff, fingerprint_sha256, run_fingerprint, same_fingerprint

MODEL = {"kind": "s3", "uri": "s3://models/m", "files": {"config.json": "c1:10", "model.safetensors": "w1:900"}}


def _fp(files=None, **changes) -> dict:
    args = dict(files=files or [FileRef("s3://b/in/b.parquet", 200, "e2"), FileRef("s3://b/in/a.parquet", 100, "e1")],
                model=MODEL, engine="native", task={"kind": "summarize", "style": ("one_sentence",)},
                params={"temperature": 0.0, "max_new_tokens": 64},
                columns={"id": "id", "text": "text", "language": None},
                id_type="string")
    return run_fingerprint(**{**args, **changes})


def test_fingerprint_is_plain_json_and_order_free():
    fp = _fp()
    assert [f["uri"] for f in fp["input"]] == ["s3://b/in/a.parquet", "s3://b/in/b.parquet"]
    assert json.loads(json.dumps(fp)) == fp  # survives _manifest.json as it is
    assert fp["task"]["style"] == ["one_sentence"]
    reordered = _fp(files=[FileRef("s3://b/in/a.parquet", 100, "e1"), FileRef("s3://b/in/b.parquet", 200, "e2")])
    assert fingerprint_sha256(reordered) == fingerprint_sha256(fp) and same_fingerprint(fp, reordered)
    assert fingerprint_diff(fp, reordered) == []
    assert not same_fingerprint(None, fp)


def test_a_rewritten_input_changes_it_even_at_the_same_size(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"x" * 10)
    before = _fp(files=storage.list_files(str(path)))
    path.write_bytes(b"y" * 10)
    os.utime(path, ns=(1, 1))  # a different mtime, same size
    after = _fp(files=storage.list_files(str(path)))
    assert fingerprint_diff(before, after) == [f"input file {path}: rewritten (version "
                                               f"{before['input'][0]['version']} -> 1)"]


def test_diff_names_each_change():
    old = _fp()
    new = _fp(files=[FileRef("s3://b/in/a.parquet", 120, "e9"), FileRef("s3://b/in/c.parquet", 5, "e3")],
              engine="baseline", model={**MODEL, "files": {"model.safetensors": "w2:900", "tokenizer.json": "t:1"}},
              task={"kind": "summarize", "style": ["bullets"]}, params={"temperature": 0.7, "max_new_tokens": 64},
              id_type="int64")
    assert fingerprint_diff(old, new) == [
        "input file s3://b/in/a.parquet: size 100 -> 120",
        "input file s3://b/in/b.parquet: removed",
        "input file s3://b/in/c.parquet: added",
        "engine: native -> baseline",
        "id_type: string -> int64",
        "model: config.json removed",
        "model: model.safetensors etag w1 (900 bytes) -> w2 (900 bytes)",
        "model: tokenizer.json added",
        "params.temperature: 0.0 -> 0.7",
        'task.style: ["one_sentence"] -> ["bullets"]',
    ]


def test_diff_of_a_run_without_fingerprint():
    assert fingerprint_diff(None, _fp()) == ["the earlier run has no fingerprint (written by an older llmbatch)"]
    assert fingerprint_diff({**_fp(), "model": {"kind": "builtin", "name": "x"}}, _fp()) == [
        'model.files: added ({"config.json": "c1:1...)', "model.kind: builtin -> s3", "model.name: removed (was x)",
        "model.uri: added (s3://models/m)"]
    moved = {**MODEL, "uri": "s3://models/m2"}
    assert fingerprint_diff(_fp(model=moved), _fp()) == ["model: uri: s3://models/m2 -> s3://models/m"]


def test_diff_of_lists_of_named_items():
    old = _fp(task={"kind": "classify", "labels": [{"name": "a", "hint": "x"}, {"name": "b"}]})
    new = _fp(task={"kind": "classify", "labels": [{"name": "a", "hint": "y"}, {"name": "b"}]})
    assert fingerprint_diff(old, new) == ["task.labels.a.hint: x -> y"]
