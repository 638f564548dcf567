"""The `_errors` dataset: the error rows of one snapshot, one Parquet file listed by its marker.

Columns: the id column (the plan's id type), `shard_id`, `error`, `error_kind` ("retriable" for
model or engine problems, "permanent" for input problems, null when a part predates kinds) and
`attempts` (how many runs tried the row). `llmbatch retry` / `retry_errors` start from it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from workers.output.parquet_io import arrow_type


def errors_schema(id_column: str, id_type: str | None) -> pa.Schema:
    return pa.schema([
        (id_column, arrow_type(id_type) or pa.string()), ("shard_id", pa.string()), ("error", pa.string()),
        ("error_kind", pa.string()), ("attempts", pa.int32()),
    ])


def empty_errors(id_column: str, id_type: str | None) -> pa.Table:
    return errors_schema(id_column, id_type).empty_table()


def _column(table: pa.Table, name: str, type_: pa.DataType, default) -> pa.Array:
    if name in table.column_names:
        return pc.cast(table.column(name), type_)
    return pa.array([default] * table.num_rows, type_)


def error_rows(part: pa.Table, shard_id: str, id_column: str, id_type: str | None) -> pa.Table:
    """The rows of one part whose `error` is set, in the `_errors` schema."""
    schema = errors_schema(id_column, id_type)
    if "error" not in part.column_names or id_column not in part.column_names:
        raise ValueError(f"part of shard {shard_id} lacks the {id_column!r} or 'error' column")
    failed = part.filter(pc.is_valid(part.column("error")))
    return pa.table([
        pc.cast(failed.column(id_column), schema.field(id_column).type),
        pa.array([shard_id] * failed.num_rows, pa.string()),
        pc.cast(failed.column("error"), pa.string()),
        _column(failed, "error_kind", pa.string(), None),
        _column(failed, "attempts", pa.int32(), 1),
    ], schema=schema)
