"""The input of an inference job, checked whole: every file readable as Parquet, the columns the
job reads present and typed, the id rules over every row, and the shards (with the rows that
`on_*_id: drop` leaves out). Problems are collected per file, never stopping at the first."""

from __future__ import annotations

import pyarrow as pa
import structlog

from cluster import storage
from jobs.manifest import InferenceManifest
from jobs.run.preflight.plan import Plan
from workers.inference.ids import check_ids
from workers.inference.shards import InputSchemaError, check_schema, file_shards, read_metadata, with_skipped_rows

log = structlog.get_logger()


def required_columns(m: InferenceManifest) -> dict[str, str]:
    """The input columns the job reads, each with what it is for (check_schema's `required`)."""
    required = {m.input.id_column: "id", m.input.text_column: "text"}
    language = getattr(m.task, "target_language_column", None)
    if language:
        required[language] = "target language"
    if m.evaluate and not m.evaluate.references_uri:  # references read from the input
        required.setdefault(m.evaluate.reference_column, "reference")
    return required


def check_input(m: InferenceManifest, plan: Plan, scope: storage.Scope | None) -> None:
    """Fill plan.files, shards, rows, id_type and dropped; add what is wrong to problems."""
    try:
        plan.files = storage.list_files(m.input.uri, scope=scope)
    except (FileNotFoundError, OSError, ValueError, storage.ScopeError) as exc:
        plan.problems.append(f"input.uri: {exc}")
        return
    required = required_columns(m)
    ids: dict[str, pa.ChunkedArray] = {}
    for ref in plan.files:
        try:
            parquet = read_metadata(ref, scope)
            meta = parquet.metadata
            check_schema(ref.uri, meta.schema.to_arrow_schema(), required)
            ids[ref.uri] = parquet.read(columns=[m.input.id_column]).column(0)  # the id column only
        except InputSchemaError as exc:
            plan.problems.append(f"input: {exc}")
            continue
        except (OSError, pa.ArrowException, storage.ScopeError) as exc:
            plan.problems.append(f"input: {ref.uri}: cannot be read ({exc})")
            continue
        plan.shards += file_shards(ref, meta, m.input.rows_per_shard)
    found = check_ids(ids, m.input.on_duplicate_id, m.input.on_null_id, m.input.id_column)
    plan.problems += [f"input ids: {p}" for p in found.problems]
    plan.warnings += [f"input ids: {w}" for w in found.warnings]
    plan.id_type = found.id_type or ""
    plan.dropped = found.dropped
    plan.shards = with_skipped_rows(plan.shards, found.skipped_rows())
    plan.rows = sum(s.num_rows for s in plan.shards)
    if not plan.rows and not plan.problems:
        plan.problems.append(f"input: {m.input.uri} holds no rows to process")
    plan.checked.append(f"input: {len(plan.files)} file(s) opened, columns {sorted(required)} looked for, "
                        f"ids checked over {sum(len(c) for c in ids.values())} row(s)")
    log.info("preflight.input", files=len(plan.files), shards=len(plan.shards), rows=plan.rows,
             dropped=len(plan.dropped), id_type=plan.id_type)


def check_readable(field: str, uri: str | list[str], plan: Plan, scope: storage.Scope | None) -> int:
    """Another Parquet input (training data, a baseline's training rows): listed and each file's
    metadata read. Returns its rows (0 when a problem was added)."""
    try:
        refs = storage.list_files(uri, scope=scope)
    except (FileNotFoundError, OSError, ValueError, storage.ScopeError) as exc:
        plan.problems.append(f"{field}: {exc}")
        return 0
    rows = 0
    for ref in refs:
        try:
            rows += read_metadata(ref, scope).metadata.num_rows
        except (InputSchemaError, OSError, pa.ArrowException, storage.ScopeError) as exc:
            plan.problems.append(f"{field}: {exc}")
    plan.checked.append(f"{field}: {len(refs)} Parquet file(s) readable ({rows} rows)")
    return rows
