"""Score a finished output location (the files its published snapshot lists) against references:
`_metrics.json`.

References come from one of two places:
- the job's input itself (the default): each part is lined up row for row with the input rows
  of its shard (file, row range and rows left out, from `_manifest.json`), so ids need not be unique (a
  translation input holds one row per paragraph *and* target language);
- other Parquet files (`references_uri`): joined by id (pyarrow), ids unique there. Output
  rows whose id has no reference count as `missing_reference`; references with no output
  row (a skipped shard, another split) are counted in `evaluation` and ignored.
Then `llm_core.metrics` scores them. Used after a job whose manifest has `evaluate:`, and by
`llmbatch eval` for any output.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from cluster import storage
from llm_core.metrics import DEFAULT_METRICS
from llm_core.metrics.compute import compute_metrics
from llm_core.tasks import OUTPUT_COLUMN, TaskKind
from workers.output.fingerprint import same_fingerprint
from workers.output.location import MANIFEST_FILE, OutputLocation

log = structlog.get_logger()

# The figures a summary line shows, in this order, with their number format.
MAIN_FIGURES = {"rouge1": ".4f", "rouge2": ".4f", "rougeL": ".4f", "bleu": ".2f", "chrf": ".2f",
                "accuracy": ".4f", "macro_f1": ".4f"}


def _checked_files(uri: str | list[str], columns: list[str], what: str):
    """(uri, filesystem, path) of every Parquet file named by `uri` (a file, folder/prefix, glob
    or list); ValueError when one lacks any of `columns`."""
    for ref in storage.list_files(uri):
        fs, path = storage.filesystem(ref.uri)
        names = pq.read_schema(path, filesystem=fs).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{what} {ref.uri}: column(s) {missing} missing (columns: {', '.join(names)})")
        yield ref.uri, fs, path


def read_columns(uri: str | list[str], columns: list[str], what: str = "references") -> pa.Table:
    """These columns of every Parquet file named by `uri`."""
    # Opened through storage.open_input: the job's scope is checked on the file really opened.
    tables = [pq.read_table(storage.open_input(file_uri), columns=columns).select(columns)
              for file_uri, _, _ in _checked_files(uri, columns, what)]
    return pa.concat_tables(tables, promote_options="permissive")


def _snapshot_files(output: OutputLocation, manifest_file: dict | None, files: dict[str, str] | None) -> dict[str, str]:
    """The parts to read: `files` when given (a run about to publish them), else exactly those the
    published marker lists. A plan (`_manifest.json`) of a different run than the marker's (an
    overwrite in progress) cannot line them up with the input: ValueError."""
    if files is not None:
        return files
    marker = output.snapshot()
    if marker is None:
        raise FileNotFoundError(f"no published snapshot (_SUCCESS.json or _PARTIAL.json) at {output.uri}")
    planned = (manifest_file or {}).get("fingerprint")
    if planned is not None and marker.get("fingerprint") is not None and not same_fingerprint(planned,
                                                                                              marker["fingerprint"]):
        raise ValueError(f"{output.uri}: {MANIFEST_FILE} plans a different run than the published snapshot "
                         "(a run in progress); its shards cannot be lined up with the input")
    return output.snapshot_files(marker)


def _input_rows(table: pa.Table, shard: dict) -> pa.Table:
    """The input rows of one shard: its row range, less the rows the plan left out (dropped ids)."""
    start, end = shard["rows"]
    source = table.slice(start, end - start)
    skip = {int(i) - start for i in shard.get("skip_rows") or ()}
    if skip:
        keep = [i for i in range(source.num_rows) if i not in skip]
        source = source.take(pa.array(keep, pa.int64()))
    return source


def read_output_with_input(output: OutputLocation, output_columns: list[str] | None, input_columns: list[str],
                           manifest_file: dict | None = None, files: dict[str, str] | None = None) -> pa.Table:
    """The snapshot's parts with input columns beside them, row for row by shard (`_manifest.json`).

    `files` ({shard_id: part path}) None reads the published snapshot. Input columns come back
    named `input.<name>`; `output_columns` None reads them all. The ids of each part must equal
    its input rows' ids: if not, the input changed since the job ran, and this raises ValueError.
    """
    manifest_file = manifest_file or output.read_manifest()
    if not manifest_file or "shards" not in manifest_file:
        raise FileNotFoundError(f"{output.uri}: no {MANIFEST_FILE} with a shard plan")
    files = _snapshot_files(output, manifest_file, files)
    id_column = manifest_file["manifest"]["input"].get("id_column", "id")
    wanted = list(dict.fromkeys([id_column, *input_columns]))
    planned = {shard["shard_id"] for shard in manifest_file["shards"]}
    if set(files) - planned:
        raise ValueError(f"{output.uri}: the snapshot lists shard(s) {sorted(set(files) - planned)[:5]} that "
                         f"{MANIFEST_FILE} does not plan")
    inputs: dict[str, pa.Table] = {}
    tables = []
    for shard in manifest_file["shards"]:
        if shard["shard_id"] not in files:
            continue
        if shard["file"] not in inputs:
            inputs[shard["file"]] = read_columns(shard["file"], wanted, what="input")
        source = _input_rows(inputs[shard["file"]], shard)
        columns = None if output_columns is None else list(dict.fromkeys([id_column, *output_columns]))
        part = output.read_part_at(files[shard["shard_id"]], columns)
        ids = part.column(id_column)
        source_ids = source.column(id_column)
        if source_ids.type != ids.type:  # the plan fixed the parts' id type
            source_ids = pc.cast(source_ids, ids.type, safe=False)
        if part.num_rows != source.num_rows or not ids.equals(source_ids):
            start, end = shard["rows"]
            raise ValueError(f"input {shard['file']} rows {start}-{end} no longer match part "
                             f"{shard['shard_id']}: the input changed since the job ran")
        for name in input_columns:
            part = part.append_column(f"input.{name}", source.column(name))
        tables.append(part)
    if not tables:
        raise FileNotFoundError(f"no output parts in the snapshot at {output.uri}")
    return pa.concat_tables(tables, promote_options="permissive")


def check_references(references_uri: str | list[str], id_column: str, reference_column: str) -> None:
    """Fail early (before any inference) when the references cannot be read as needed."""
    list(_checked_files(references_uri, [id_column, reference_column], "references"))  # raises on a gap


def _as_string(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column if pa.types.is_string(column.type) else pc.cast(column, pa.string())


def _predictions(column: pa.ChunkedArray) -> list:
    """The outputs scored: with params.n > 1 (a list per row) the first completion of each row."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = pc.list_element(column, 0)
    return _as_string(column).to_pylist()


def evaluate_output(output: OutputLocation, *, task: TaskKind, reference_column: str,
                    references_uri: str | list[str] | None = None, id_column: str = "id",
                    metrics: list[str] | None = None, use_stemmer: bool = False, write: bool = True,
                    files: dict[str, str] | None = None) -> dict:
    """Score an output against its references, write `_metrics.json`; return the metrics.

    `references_uri` None: the references are a column of the job's own input (by shard, see
    above); else Parquet files joined by `id_column`. `files` ({shard_id: part path}) None scores
    the published snapshot; a runner passes the files it is about to publish. The result is
    `compute_metrics`'s dict (counts and one key per metric) plus `evaluation`: where the
    references came from.
    """
    output_column = OUTPUT_COLUMN[task]
    if metrics is None and not DEFAULT_METRICS.get(task):
        raise ValueError(f"task {task} has no default metrics: name them")
    if references_uri is None:
        table = read_output_with_input(output, [output_column], [reference_column], files=files)
        predictions = _predictions(table.column(output_column))
        references = _as_string(table.column(f"input.{reference_column}")).to_pylist()
        unmatched, source = 0, "input"
    else:
        predictions, references, unmatched = _join_references(output, output_column, references_uri,
                                                              reference_column, id_column, files)
        source = references_uri
    result = compute_metrics(task, predictions, references, metrics, use_stemmer=use_stemmer)
    result["evaluation"] = {
        "references": source, "reference_column": reference_column, "id_column": id_column,
        "output_column": output_column, "references_without_output": unmatched,
        "use_stemmer": use_stemmer, "evaluated_at": time.time(),
    }
    if write:
        output.write_metrics(result)
    return result


def _join_references(output: OutputLocation, output_column: str, references_uri: str | list[str],
                     reference_column: str, id_column: str, files: dict[str, str] | None) -> tuple[list, list, int]:
    columns = [id_column, output_column]
    outputs = output.read_snapshot(columns) if files is None else output.read_files(files.values(), columns)
    refs = read_columns(references_uri, [id_column, reference_column])
    ref_ids = refs.column(id_column)
    if pc.count_distinct(ref_ids).as_py() != len(ref_ids) - ref_ids.null_count:
        raise ValueError(f"references {references_uri}: column {id_column!r} holds duplicate ids")
    # Prefixed names: the reference column may share its name with the output column ("label").
    refs = refs.rename_columns(["__id", "__reference"])
    outputs = outputs.rename_columns(["__id", "__prediction"])
    if refs.schema.field("__id").type != outputs.schema.field("__id").type:  # e.g. int ids in one, str in other
        refs = refs.set_column(0, "__id", _as_string(refs.column("__id")))
        outputs = outputs.set_column(0, "__id", _as_string(outputs.column("__id")))
    joined = outputs.join(refs, keys="__id", join_type="left outer")
    matched = pc.sum(pc.is_in(refs.column("__id"), value_set=outputs.column("__id").combine_chunks())).as_py() or 0
    return (_predictions(joined.column("__prediction")),
            _as_string(joined.column("__reference")).to_pylist(), refs.num_rows - matched)


def evaluate_job(manifest, output: OutputLocation, files: dict[str, str] | None = None) -> dict:
    """Evaluate a job's output (the published snapshot, or `files`) as its manifest's `evaluate:`
    block says."""
    spec = manifest.evaluate
    return evaluate_output(
        output, task=manifest.task.kind, references_uri=spec.references_uri,
        reference_column=spec.reference_column, id_column=manifest.input.id_column,
        metrics=spec.metrics, use_stemmer=spec.use_stemmer, files=files,
    )


def headline(metrics: dict) -> dict:
    """The headline metrics present, as numbers (for logs)."""
    return {name: metrics[name] for name in MAIN_FIGURES if isinstance(metrics.get(name), (int, float))}


def main_figures(metrics: dict) -> list[tuple[str, str]]:
    """(name, formatted value) of the headline metrics present, for summaries and logs."""
    return [(name, format(metrics[name], fmt)) for name, fmt in MAIN_FIGURES.items()
            if isinstance(metrics.get(name), (int, float))]
