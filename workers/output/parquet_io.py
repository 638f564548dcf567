"""Parquet objects of an output location as bytes: written whole, read through the job's scope."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import storage
from cluster.storage.scope import Scope


def to_parquet_bytes(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """One Parquet file (zstd) in memory, with `metadata` added to its schema's key/value pairs."""
    extra = {k.encode(): str(v).encode() for k, v in (metadata or {}).items()}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **extra}), sink,
                   compression="zstd")
    return sink.getvalue().to_pybytes()


def column_total(column: pa.ChunkedArray | pa.Array) -> int:
    """The sum of a count column: per row, or per completion (a list per row when params.n > 1)."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_flatten(column)
    return int(pc.sum(column).as_py() or 0)


def read_parquet(uri: str, columns: list[str] | None, scope: Scope | None) -> pa.Table:
    with storage.open_input(uri, scope=scope) as f:
        return pq.read_table(f, columns=columns)


def read_columns_present(uri: str, wanted: list[str], scope: Scope | None) -> pa.Table:
    """Those of `wanted` columns the file has (reading nothing else)."""
    with storage.open_input(uri, scope=scope) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        return pf.read(columns=[c for c in dict.fromkeys(wanted) if c in names])


def arrow_type(type_name: str | None) -> pa.DataType | None:
    """A pyarrow type from its name ("string", "int64", "large_string"); None for None."""
    if not type_name:
        return None
    try:
        return pa.type_for_alias(type_name)
    except ValueError:
        raise ValueError(f"id_type {type_name!r} is not a pyarrow type name") from None
