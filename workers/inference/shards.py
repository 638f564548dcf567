"""Shard planning over Parquet inputs: file x row-group ranges with stable ids.

A shard's id is a hash of the file's URI, size (and etag on S3) and the shard's row range, so
the same input always plans the same shards: that is what lets `mode: resume` skip work that
an earlier run committed, and what lets a retried attempt collide with the first one.
Rows the pre-flight leaves out (a duplicate or null id under `on_*_id: drop`) are listed on
their shard as `skip_rows`; they change neither the shard's range nor its id.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage
from cluster.hashing import text_sha256
from cluster.storage.scope import Scope, ScopeError


class InputSchemaError(ValueError):
    """An input file cannot be used as it is (missing or mistyped column); names the file."""


@dataclass(frozen=True)
class Shard:
    shard_id: str
    file_uri: str
    row_start: int  # first row of the shard within the file
    row_end: int  # one past the last row
    row_groups: tuple[int, ...]  # the row groups that hold these rows
    group_offset: int  # file row index of the first row of row_groups[0]
    skip_rows: tuple[int, ...] = ()  # file row indexes in the range that are left out (sorted)

    @property
    def num_rows(self) -> int:
        """The rows the shard reads: its range less the rows it skips."""
        return self.row_end - self.row_start - len(self.skip_rows)


def shard_id(ref: storage.FileRef, row_start: int, row_end: int) -> str:
    # Local mtimes change on copy/checkout without the content changing: use size only there.
    version = ref.version if storage.is_s3(ref.uri) else ""
    key = f"{ref.uri}|{ref.size}|{version}|{row_start}-{row_end}"
    return text_sha256(key)[:20]


def open_parquet(uri: str, scope: Scope | None = None) -> pq.ParquetFile:
    """The file opened now, its real path checked against the scope (None: the process's)."""
    return pq.ParquetFile(storage.open_input(uri, scope=scope))


def check_schema(uri: str, schema: pa.Schema, required: dict[str, str]) -> None:
    """`required` maps a column name to what it is for ("text", "id", ...)."""
    problems = []
    for column, role in required.items():
        if column not in schema.names:
            problems.append(f"{role} column {column!r} is missing (columns: {', '.join(schema.names)})")
        elif role in ("text", "target language"):
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                problems.append(f"{role} column {column!r} has type {kind}, expected string")
    if problems:
        raise InputSchemaError(f"{uri}: " + "; ".join(problems))


def read_metadata(ref: storage.FileRef, scope: Scope | None = None) -> pq.ParquetFile:
    """The file opened (InputSchemaError when it is not Parquet; ScopeError passes through)."""
    try:
        return open_parquet(ref.uri, scope)
    except ScopeError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputSchemaError(f"{ref.uri}: not a readable Parquet file ({exc})") from None


def file_shards(ref: storage.FileRef, meta: pq.FileMetaData, rows_per_shard: int | None = None) -> list[Shard]:
    """One file cut into shards: each row group, split into `rows_per_shard` rows when given."""
    shards: list[Shard] = []
    offset = 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        step = rows_per_shard or n
        for start in range(0, n, max(step, 1)):
            end = min(start + step, n)
            shards.append(Shard(shard_id(ref, offset + start, offset + end), ref.uri,
                                offset + start, offset + end, (group,), offset))
        offset += n
    return shards


def plan_shards(uri: str | list[str], required: dict[str, str], rows_per_shard: int | None = None,
                scope: Scope | None = None) -> list[Shard]:
    """List the input files, check each one's schema, and cut them into shards.
    A file outside the scope (a symlink out of it) raises ScopeError naming it."""
    shards: list[Shard] = []
    for ref in storage.list_files(uri, scope=scope):
        meta = read_metadata(ref, scope).metadata
        check_schema(ref.uri, meta.schema.to_arrow_schema(), required)
        shards += file_shards(ref, meta, rows_per_shard)
    return shards


def with_skipped_rows(shards: list[Shard], skipped: dict[str, Iterable[int]]) -> list[Shard]:
    """The shards with `skip_rows` set: `skipped` maps a file URI to its row indexes to leave out."""
    by_file: dict[str, list[Shard]] = {}
    for s in shards:
        by_file.setdefault(s.file_uri, []).append(s)
    extra: dict[str, list[int]] = {}
    for file, rows in skipped.items():
        ranges = sorted(by_file.get(file, []), key=lambda s: s.row_start)
        starts = [s.row_start for s in ranges]
        for row in rows:
            i = bisect_right(starts, row) - 1
            if i < 0 or row >= ranges[i].row_end:
                raise ValueError(f"{file}: row {row} is in no shard")
            extra.setdefault(ranges[i].shard_id, []).append(row)
    return [replace(s, skip_rows=tuple(sorted(set(s.skip_rows) | set(extra[s.shard_id]))))
            if s.shard_id in extra else s for s in shards]


def read_shard(shard: Shard, columns: list[str], scope: Scope | None = None) -> pa.Table:
    """The shard's rows, read from the file as it is now (checked again: it may have been
    swapped for a symlink since planning), less its `skip_rows`."""
    table = open_parquet(shard.file_uri, scope).read_row_groups(list(shard.row_groups), columns=columns)
    table = table.slice(shard.row_start - shard.group_offset, shard.row_end - shard.row_start)
    if not shard.skip_rows:
        return table
    keep = np.ones(table.num_rows, dtype=bool)
    keep[np.asarray(shard.skip_rows, dtype=np.int64) - shard.row_start] = False
    return table.filter(pa.array(keep))
