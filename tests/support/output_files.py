"""An output location read the way a pipeline reads it: the published marker (`_SUCCESS.json` or
`_PARTIAL.json`) and exactly the files it lists; and, apart from that, every part file present,
so a test can tell what a reader sees from what lies in the folder. Local paths and s3:// alike."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage
from workers.output.layout import PART_PATH_RE

SUCCESS, PARTIAL, MANIFEST = "_SUCCESS.json", "_PARTIAL.json", "_manifest.json"


def read_json(out, name: str) -> dict | None:
    uri = storage.join(str(out), name)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def marker(out) -> tuple[str | None, dict | None]:
    """(file name, marker) of what is published; (None, None) when nothing is. Never both."""
    success, partial = read_json(out, SUCCESS), read_json(out, PARTIAL)
    assert not (success and partial), f"{out} holds both {SUCCESS} and {PARTIAL}"
    if success:
        return SUCCESS, success
    if partial:
        return PARTIAL, partial
    return None, None


def read_part(out, path: str, columns: list[str] | None = None) -> pa.Table:
    with storage.open_input(storage.join(str(out), path)) as f:
        return pq.read_table(f, columns=columns)


def snapshot_table(out, columns: list[str] | None = None) -> pa.Table:
    """The rows of exactly the files the published marker lists."""
    name, m = marker(out)
    assert m is not None, f"nothing is published at {out}"
    tables = [read_part(out, f["path"], columns) for f in m["files"]]
    return pa.concat_tables(tables) if tables else pa.table({})


def snapshot_ids(out, id_column: str = "id") -> list:
    return snapshot_table(out, [id_column]).column(id_column).to_pylist()


def assert_each_id_once(out, expected, id_column: str = "id") -> None:
    ids = snapshot_ids(out, id_column)
    dupes = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    assert not dupes, f"ids listed more than once in the snapshot: {dupes[:20]}"
    assert set(ids) == set(expected), (f"missing: {sorted(set(expected) - set(ids), key=str)[:20]}, "
                                       f"extra: {sorted(set(ids) - set(expected), key=str)[:20]}")


def part_files(out) -> list[str]:
    """Every llmbatch part under data/ (data/<run_id>/part-<shard_id>.parquet, relative paths),
    listed by a marker or not; a foreign file there is not one."""
    base = storage.normalize(str(out)).rstrip("/") + "/"
    try:
        refs = storage.list_files(storage.join(str(out), "data"), ".parquet")
    except FileNotFoundError:
        return []
    return sorted(p for r in refs if PART_PATH_RE.match(p := storage.normalize(r.uri)[len(base):]))


def errors_files(out) -> list[str]:
    base = storage.normalize(str(out)).rstrip("/") + "/"
    try:
        refs = storage.list_files(storage.join(str(out), "_errors"), ".parquet")
    except FileNotFoundError:
        return []
    return sorted(storage.normalize(r.uri)[len(base):] for r in refs)


def run_parts(out, run_id: str) -> list[str]:
    return [p for p in part_files(out) if p.startswith(f"data/{run_id}/")]
