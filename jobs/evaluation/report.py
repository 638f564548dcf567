"""The report of one output location: the parts its published snapshot lists (`_SUCCESS.json`
or `_PARTIAL.json`), `_metrics.json`, `_manifest.json` and, for the sample of inputs beside
outputs, the input files the manifest names.

Works on unfinished outputs too (no marker yet: the parts the running run committed so far; no
metrics; inputs moved away): what is missing is left out of the page with a note, never an error.
"""

from __future__ import annotations

import pyarrow as pa
import structlog

from jobs.evaluation.scoring import read_output_with_input
from llm_core.report import ReportColumns, render_report
from llm_core.tasks import OUTPUT_COLUMN, TaskKind
from workers.output.location import OutputLocation

log = structlog.get_logger()

_NOT_SHOWN = ("metrics", "files", "fingerprint", "format")


def _task_of(manifest: dict, rows: pa.Table) -> TaskKind:
    kind = (manifest.get("task") or {}).get("kind")
    if kind in OUTPUT_COLUMN:
        return TaskKind(kind)
    for task, column in OUTPUT_COLUMN.items():  # no manifest: the output column tells
        if column in rows.column_names:
            return task
    raise ValueError(f"no output column ({', '.join(OUTPUT_COLUMN.values())}) in {rows.column_names}")


def _files_to_show(out: OutputLocation, marker: dict | None, manifest_file: dict) -> tuple[dict[str, str], dict]:
    """The parts the page shows and its summary: the published snapshot's files, or before any
    publish, the parts committed so far by the run `_manifest.json` plans (a job in progress)."""
    if marker is not None:
        summary = {k: v for k, v in marker.items() if k not in _NOT_SHOWN}  # metrics have their own section
        summary["files"] = len(marker.get("files", []))
        return out.snapshot_files(marker), summary
    run_id = manifest_file.get("run_id")
    if not run_id:
        raise FileNotFoundError(f"no published snapshot (_SUCCESS.json or _PARTIAL.json) and no run at {out.uri}")
    committed = sorted(out.committed_shards(run_id))
    planned = len(manifest_file.get("shards") or [])
    summary = {"status": f"not published yet: {len(committed)} of {planned} shard(s) committed by run {run_id}",
               "output": out.uri}
    return {sid: out.part_path(run_id, sid) for sid in committed}, summary


def _rows_with_inputs(out: OutputLocation, manifest_file: dict, files: dict[str, str]) -> tuple[pa.Table, list | None]:
    """The output rows and, beside them, each row's input text (from the input files, by shard);
    None for the inputs when the input cannot be read any more (moved, changed)."""
    manifest = manifest_file.get("manifest") or {}
    text_column = (manifest.get("input") or {}).get("text_column", "text")
    if manifest_file.get("shards"):
        try:
            rows = read_output_with_input(out, None, [text_column], manifest_file, files)
            inputs = rows.column(f"input.{text_column}").to_pylist()
            return rows.drop_columns([f"input.{text_column}"]), inputs
        except (OSError, ValueError) as exc:
            log.warning("report.inputs_unavailable", output=out.uri, error=str(exc))
    return out.read_files(files.values()), None


def build_report(output_uri: str, *, sample_size: int = 20, title: str | None = None) -> str:
    out = OutputLocation.at(output_uri)
    manifest_file = out.read_manifest() or {}
    manifest = manifest_file.get("manifest") or {}
    marker = out.snapshot()
    metrics = out.read_metrics() or (marker or {}).get("metrics")
    files, summary = _files_to_show(out, marker, manifest_file)
    rows, inputs = _rows_with_inputs(out, manifest_file, files)
    id_column = (manifest.get("input") or {}).get("id_column", "id")
    task = _task_of(manifest, rows)
    if marker is None:
        summary["parts_rows"] = rows.num_rows
    if manifest:
        summary = {**summary, "task": task, "input": (manifest.get("input") or {}).get("uri"),
                   "engine": manifest.get("engine"), "model": manifest.get("model")}
    name = manifest.get("name") or out.uri.rstrip("/").rsplit("/", 1)[-1]
    return render_report(
        rows, metrics, summary,
        columns=ReportColumns(id=id_column, output=OUTPUT_COLUMN[task]),
        inputs=inputs,
        title=title or f"llmbatch report: {name} ({task})", sample_size=sample_size,
    )
