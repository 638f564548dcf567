"""Manifests written to hurt the parser: alias bombs, duplicate keys, non-UTF-8 bytes, huge numbers,
deep nesting. Each is refused in bounded time with one line naming the line/column or field, by
`validate` and `submit` (client side) alike, and the API refuses duplicate keys in JSON bodies."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from jobs.api.app import create_app
from jobs.manifest import ManifestError, load_manifest, parse_manifest_text
from jobs.manifest.load import read_manifest_text
from jobs.manifest.yaml_text import MAX_DEPTH, duplicate_json_keys
from jobs.service.auth import create_token
from jobs.service.store.job_store import Store
from tests.support.paths import REPO

LOL = '"lol","lol","lol","lol","lol","lol","lol","lol","lol"'
# The classic "billion laughs": 9 levels of 9 aliases each, 9**9 strings once expanded.
BOMB = f"a: &a [{LOL}]\n" + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)
GOOD = "name: ok\ntask: summarize\ninput: {uri: data/x.parquet}\noutput: {uri: out/x}\n"


def refusal(text: str | bytes) -> str:
    """The one error of a refused manifest text, checked to be a single line."""
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(text, "m.yaml")
    assert len(info.value.errors) == 1, info.value.errors
    message = str(info.value)
    assert "\n" not in message and message.startswith("invalid manifest m.yaml: ")
    return str(info.value.errors[0])


def test_billion_laughs_is_refused_at_once():
    assert 300 < len(BOMB) < 600
    start = time.perf_counter()
    message = refusal(BOMB)
    assert time.perf_counter() - start < 0.1
    assert message == ("not valid YAML: line 1, column 4: YAML anchors and aliases (&name, *name) "
                       "are not allowed in a manifest")


@pytest.mark.parametrize("text, where", [
    (GOOD + "labels: &l [a, b]\n", "line 5, column 9"),  # an anchor alone
    ("x: *undefined\n" + GOOD, "line 1, column 4"),  # an alias alone
    (GOOD + "resources: {<<: *base, workers: 2}\n", "line 5, column 17"),  # a merge key's alias
])
def test_every_anchor_and_alias_is_refused(text, where):
    assert refusal(text).startswith(f"not valid YAML: {where}: YAML anchors and aliases")


@pytest.mark.parametrize("text, where, key", [
    (GOOD + "engine: baseline\nengine: auto\n", "line 6, column 1", "engine"),
    ("name: ok\ninput:\n  uri: a.parquet\n  uri: b.parquet\n", "line 4, column 3", "uri"),
    ("a:\n  - {x: 1, y: 2, x: 3}\n", "line 2, column 18", "x"),
    ('{"name": "a", "task": "summarize", "name": "b"}', "line 1, column 36", "name"),
    ("1: a\n0x1: b\n", "line 2, column 1", 1),  # equal once read, however written
])
def test_duplicate_keys_are_refused_at_any_depth(text, where, key):
    assert refusal(text) == f"not valid YAML: {where}: duplicate key {key!r} (each field may appear once)"


def test_merge_key_without_alias_still_works_and_equal_keys_in_different_maps_do_not_clash():
    data = read_manifest_text("a: {<<: {x: 1}, y: 2}\nb: {x: 1}\nc: [{x: 1}, {x: 2}]\n")
    assert data == {"a": {"x": 1, "y": 2}, "b": {"x": 1}, "c": [{"x": 1}, {"x": 2}]}


@pytest.mark.parametrize("raw, where", [
    (GOOD.encode() + b"description: caf\xe9\n", "line 5, column 17"),
    (b"\xff\xfename: x\n", "line 1, column 1"),
    ("name: ok\n".encode("utf-16"), "line 1, column 1"),
])
def test_non_utf8_bytes_are_refused_with_their_place(raw, where):
    message = refusal(raw)
    assert message.startswith("not UTF-8: byte 0x") and f"at {where} (manifests are UTF-8 text)" in message


@pytest.mark.parametrize("number, rule", [
    ("9" * 5000, "integer of 5000 digits (at most 18)"),
    ("-1234567890123456789", "integer of 19 digits (at most 18)"),
    ("0x" + "f" * 40, "integer of 40 digits (at most 18)"),
    ("1_000_000_000_000_000_000", "integer of 19 digits (at most 18)"),
    ("1.0e+999", "number '1.0e+999' is not finite"),
    ("-.inf", "number '-.inf' is not finite"),
    (".nan", "number '.nan' is not finite"),
])
def test_oversized_numbers_are_refused(number, rule):
    assert refusal(f"{GOOD}resources: {{workers: {number}}}\n") == f"not valid YAML: line 5, column 22: {rule}" + (
        " (too large, .inf or .nan)" if "finite" in rule else "")


def test_numbers_up_to_the_limit_are_read():
    data = read_manifest_text(f"a: {'9' * 18}\nb: -{'9' * 18}\nc: 1.5e+300\nd: 0.{'1' * 500}\n")
    assert data["a"] == 10**18 - 1 and data["b"] == -(10**18 - 1) and data["c"] == 1.5e300


@pytest.mark.parametrize("text, rule", [
    ("a: " + "[" * 5000 + "]" * 5000, f"nested deeper than {MAX_DEPTH} levels"),
    ("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 60)), f"nested deeper than {MAX_DEPTH} levels"),
    ("a: !!python/object/apply:os.system ['id > marker']\n", "could not determine a constructor"),
    ("a: !!int twelve\n", "'twelve' is not a valid int"),
    ("a: 0000-01-01\n", "'0000-01-01' is not a valid timestamp: year 0 is out of range"),
    ("a: !!int ''\n", "line 1, column 4: '' is not a valid int"),
    ("a: !!bool maybe\n", "'maybe' is not a valid bool"),
    ("a: !!timestamp soon\n", "'soon' is not a valid timestamp"),
    ("a: b\x00c\n", "line 1, column 5: character #x0000 is not allowed in YAML"),
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream"),
    ("x" * (2 << 20), "over the 1048576 limit"),
])
def test_other_hostile_texts_are_refused(text, rule, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rule in refusal(text)
    assert not (tmp_path / "marker").exists()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli.main", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


HOSTILE_FILES = [
    (BOMB.encode(), "anchors and aliases"),
    ((GOOD + "engine: baseline\nengine: auto\n").encode(), "line 6, column 1: duplicate key 'engine'"),
    (GOOD.encode() + b"description: \xff\n", "not UTF-8: byte 0xff at line 5, column 14"),
    ((GOOD + f"resources: {{workers: {'7' * 5000}}}\n").encode(), "integer of 5000 digits"),
]


@pytest.mark.parametrize("content, needle", HOSTILE_FILES)
def test_load_manifest_refuses_hostile_files(tmp_path, content, needle):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("command", ["validate", "submit"])
def test_cli_refuses_in_one_line_without_traceback(tmp_path, command):
    """`submit` reads the file as `validate` does, and refuses it before calling the service."""
    path = tmp_path / "hostile.yaml"
    content, needle = HOSTILE_FILES[0] if command == "validate" else HOSTILE_FILES[1]
    path.write_bytes(content)
    extra = ("--server", "http://127.0.0.1:9") if command == "submit" else ()
    proc = _cli(command, *extra, str(path))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "127.0.0.1:9" not in proc.stderr


def test_oversized_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(50 << 20)  # 50 MiB of zero bytes, sparse on disk
    with pytest.raises(ManifestError, match="file is over the 1048576-byte limit of a manifest"):
        load_manifest(path)


def test_duplicate_json_keys_are_found_with_their_path():
    raw = b'{"manifest": {"engine": "baseline", "engine": "auto", "input": [{"u": 1, "u": 2}]}, "queue": "q"}'
    assert [(e.path, e.message) for e in duplicate_json_keys(raw)] == [
        ("manifest.engine", "duplicate key (each field may appear once)"),
        ("manifest.input[0].u", "duplicate key (each field may appear once)"),
    ]
    assert duplicate_json_keys(b'{"a": {"x": 1}, "b": {"x": 1}}') == []
    assert duplicate_json_keys(b"not json {") == [] and duplicate_json_keys(b"[" * 100_000) == []


def test_api_refuses_duplicate_keys_in_the_json_body(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/jobs.db")
    try:
        token = create_token(store, "alice", input_prefixes=[str(tmp_path)], output_prefixes=[str(tmp_path)])
        client = TestClient(create_app(store, max_body_bytes=64 * 1024))
        body = json.dumps({"name": "sum", "task": "summarize", "input": {"uri": str(tmp_path / "in.parquet")},
                           "output": {"uri": str(tmp_path / "out")}, "engine": "baseline"})
        raw = '{"manifest": ' + body[:-1] + ', "engine": "auto"}}'
        r = client.post("/v1/jobs", content=raw, headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["fields"] == [{"path": "manifest.engine",
                                                "message": "duplicate key (each field may appear once)"}]
        assert store.list_jobs() == []
    finally:
        store.close()
