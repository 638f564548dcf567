"""Publishing a snapshot: the one moment an output location changes what readers see.

Order (each step safe to crash after):
1. read each part to be listed: per-file rows, error rows, tokens, bytes;
2. write `_errors/<snapshot_id>.parquet` (only when there are error rows);
3. check the writer lease (a job that lost it publishes nothing);
4. PUT the marker: a success PUTs `_SUCCESS.json`, then deletes a stale `_PARTIAL.json`; a
   partial run deletes `_SUCCESS.json`, then PUTs `_PARTIAL.json` (never both beside each other
   for a reader preferring `_SUCCESS.json` to pick the wrong one);
5. garbage-collect: delete the objects under `data/` and `_errors/` whose names match our own
   patterns (layout.is_ours) and that the new marker does not list. Nothing else is ever
   deleted: not a user's file, not the job's input, not a foreign object under `data/`. A crash
   before this step leaves unlisted files that the next publish removes.
"""

from __future__ import annotations

import time

import pyarrow as pa
import structlog

from cluster import storage
from workers.output.errors_dataset import error_rows
from workers.output.fingerprint import fingerprint_sha256
from workers.output.layout import (
    DATA_DIR, ERRORS_DIR, PARTIAL_FILE, SNAPSHOT_FORMAT, SUCCESS_FILE, errors_path, is_ours, new_snapshot_id,
    parse_part_path,
)
from workers.output.parquet_io import arrow_type, column_total, read_columns_present, to_parquet_bytes

log = structlog.get_logger()

STATUSES = ("succeeded", "partial")
COUNTS = ("rows", "error_rows", "prompt_tokens", "completion_tokens")
STAT_COLUMNS = ("error", "error_kind", "attempts", "prompt_tokens", "completion_tokens")


def _sum(table: pa.Table, name: str) -> int:
    return column_total(table.column(name)) if name in table.column_names else 0


def _file_entry(path: str, shard_id: str, table: pa.Table, size: int) -> dict:
    errors = table.num_rows - table.column("error").null_count if "error" in table.column_names else 0
    return {"path": path, "shard_id": shard_id, "rows": table.num_rows, "error_rows": errors,
            "prompt_tokens": _sum(table, "prompt_tokens"), "completion_tokens": _sum(table, "completion_tokens"),
            "bytes": size}


def _read_files(location, files: dict[str, str], id_column: str, id_type: str | None) -> tuple[list[dict], list]:
    """Per-file stats and error rows, reading only the small columns (never the outputs' text);
    sizes come from one listing. A listed file that does not exist refuses the publish."""
    sizes = dict(_listing(location, DATA_DIR))
    entries, errors = [], []
    for shard_id, path in files.items():  # in the caller's order (the plan's: input order)
        _, sid_in_path = parse_part_path(path)
        if sid_in_path != shard_id:
            raise ValueError(f"files[{shard_id!r}] names {path}, the part of shard {sid_in_path}")
        if path not in sizes:
            raise FileNotFoundError(f"cannot publish {location.uri}: part {path} of shard {shard_id} does not exist")
        table = read_columns_present(location.path(path), [id_column, *STAT_COLUMNS], location.scope)
        entries.append(_file_entry(path, shard_id, table, sizes[path]))
        failed = error_rows(table, shard_id, id_column, id_type)
        if failed.num_rows:
            errors.append(failed)
    return entries, errors


def publish_snapshot(location, *, status: str, job_id: str, run_id: str, fingerprint: dict,
                     files: dict[str, str], id_column: str, id_type: str | None, summary: dict,
                     reasons: list[str], lease=None) -> dict:
    """Publish the snapshot listing exactly `files` ({shard_id: relative part path}); the marker.

    The whole-job counts are computed from the listed files (they override `summary`'s);
    `reasons` say why a run is partial. `lease` (an OutputLease) is checked before the marker
    is written (LeaseLost: nothing is published) and again before garbage collection (lost then,
    or any error while collecting: the collection is left to the next publish, logged).
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    arrow_type(id_type)  # a bad type name fails before anything is written
    bound = log.bind(job_id=job_id, output=location.uri)
    snapshot_id = new_snapshot_id()
    entries, errors = _read_files(location, files, id_column, id_type)
    errors_file = None
    if errors:
        errors_file = errors_path(snapshot_id)
        table = pa.concat_tables(errors)
        storage.write_bytes(location.path(errors_file),
                            to_parquet_bytes(table, {"llmbatch.snapshot_id": snapshot_id}), scope=location.scope)
    totals = {name: sum(e[name] for e in entries) for name in COUNTS}
    marker = {
        **summary, **totals, "format": SNAPSHOT_FORMAT, "status": status, "job_id": job_id, "run_id": run_id,
        "snapshot_id": snapshot_id, "fingerprint": fingerprint, "fingerprint_sha256": fingerprint_sha256(fingerprint),
        "files": entries, "errors_file": errors_file, "shards_published": len(entries), "reasons": list(reasons),
        "id_column": id_column, "id_type": id_type, "published_at": time.time(),
    }
    if lease is not None:
        lease.check()
    if status == "succeeded":
        location.write_json(SUCCESS_FILE, marker)
        location.withdraw_marker(PARTIAL_FILE)
    else:
        location.withdraw_marker(SUCCESS_FILE)
        location.write_json(PARTIAL_FILE, marker)
    bound.info("output.published", status=status, snapshot_id=snapshot_id, files=len(entries),
               rows=totals["rows"], error_rows=totals["error_rows"])
    try:  # the snapshot is published: a GC that cannot run now is done by the next publish
        if lease is not None:
            lease.check()
        removed = collect_garbage(location, marker)
    except Exception as exc:
        bound.warning("output.garbage_collection_skipped", error=str(exc))
    else:
        if removed:
            bound.info("output.garbage_collected", removed=len(removed))
    return marker


def _relative(location, uri: str) -> str:
    base, uri = storage.normalize(location.uri).rstrip("/") + "/", storage.normalize(uri)
    if not uri.startswith(base):
        raise ValueError(f"{uri} is not inside {location.uri}")
    return uri[len(base):]


def _listing(location, folder: str) -> list[tuple[str, int]]:
    """(relative path, size) of the .parquet objects under `folder` (none when it is missing)."""
    try:
        refs = storage.list_files(location.path(folder), ".parquet", scope=location.scope)
    except FileNotFoundError:
        return []
    return [(_relative(location, ref.uri), ref.size) for ref in refs]


def our_objects(location) -> list[str]:
    """Relative paths of the objects under `data/` and `_errors/` whose names llmbatch writes."""
    return sorted(path for folder in (DATA_DIR, ERRORS_DIR) for path, _ in _listing(location, folder) if is_ours(path))


def collect_garbage(location, marker: dict) -> list[str]:
    """Delete our objects (data/ parts, _errors files) that `marker` does not list; their paths."""
    keep = {f["path"] for f in marker.get("files", [])}
    if marker.get("errors_file"):
        keep.add(marker["errors_file"])
    removed = [path for path in our_objects(location) if path not in keep]
    for path in removed:
        storage.delete(location.path(path), scope=location.scope)
    return removed
