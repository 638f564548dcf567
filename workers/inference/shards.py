"""Shard planning over Parquet inputs: file x row-group ranges with stable ids.

A shard's id is a hash of the file's URI, size (and etag on S3) and the shard's row range, so
the same input always plans the same shards: that is what lets `mode: resume` skip work that
an earlier run committed, and what lets a retried attempt collide with the first one.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @property
    def num_rows(self) -> int:
        return self.row_end - self.row_start


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


def plan_shards(uri: str | list[str], required: dict[str, str], rows_per_shard: int | None = None,
                scope: Scope | None = None) -> list[Shard]:
    """List the input files, check each one's schema, and cut them into shards.
    A file outside the scope (a symlink out of it) raises ScopeError naming it."""
    shards: list[Shard] = []
    for ref in storage.list_files(uri, scope=scope):
        try:
            meta = open_parquet(ref.uri, scope).metadata
        except ScopeError:
            raise
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputSchemaError(f"{ref.uri}: not a readable Parquet file ({exc})") from None
        check_schema(ref.uri, meta.schema.to_arrow_schema(), required)
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


def read_shard(shard: Shard, columns: list[str], scope: Scope | None = None) -> pa.Table:
    """The shard's rows, read from the file as it is now (checked again: it may have been
    swapped for a symlink since planning)."""
    table = open_parquet(shard.file_uri, scope).read_row_groups(list(shard.row_groups), columns=columns)
    return table.slice(shard.row_start - shard.group_offset, shard.num_rows)
