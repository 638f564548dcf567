"""The output location of a job, and the one place its layout and commit protocol live.

An inference output is a file manifest, as table formats keep one:

    <output>/
      _SUCCESS.json           the published snapshot of a run that succeeded (one PUT, written last)
      _PARTIAL.json           the published snapshot of a run that ended partial (never beside _SUCCESS.json)
      _manifest.json          the plan of the latest run started here: run_id, job_id, fingerprint, shards, id_type
      _lease/<gen>.json       the writer lease: one live job writes here at a time (lease.py)
      data/<run_id>/part-<shard_id>.parquet   one per shard, created with put_if_absent (exactly once)
      _errors/<snapshot_id>.parquet           the error rows of one snapshot (errors_dataset.py)
      _metrics.json           evaluation metrics

A marker (`_SUCCESS.json` / `_PARTIAL.json`, format `llmbatch.snapshot/1`) lists in `files` the
exact parts of the snapshot it describes, with per-file counts, the run's fingerprint and why
a partial run is partial. A reader reads exactly those files (`read_snapshot`), never a folder:
parts of a run in progress, of an older run, or foreign files beside them are never read.

A run writes into its own `data/<run_id>/` (modes.py decides the run id: `resume` continues the
run in `_manifest.json` only with an equal fingerprint; `overwrite` and `retry_errors` start a
new one), and nothing changes for readers until `snapshot.publish_snapshot` PUTs the new marker
and then garbage-collects the parts and error files no marker lists. Nothing here deletes by
prefix. A training job's location holds the exported model and its `_SUCCESS.json` summary.

Runners, inference actors, evaluation and the report all go through an `OutputLocation`; none
of them spells a file name of this layout or calls `cluster.storage` with an output URI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from cluster import storage
from cluster.storage.scope import Scope
from workers.output.errors_dataset import empty_errors
from workers.output.layout import (
    LEASE_DIR, MANIFEST_FILE, METRICS_FILE, PARTIAL_FILE, PART_NAME_RE, SUCCESS_FILE, parse_part_path, part_path,
    run_dir,
)
from workers.output.modes import OutputExistsError, OutputMode, RunSlot, prepare_model, prepare_run
from workers.output.parquet_io import read_parquet, to_parquet_bytes

__all__ = [
    "MANIFEST_FILE", "METRICS_FILE", "PARTIAL_FILE", "SUCCESS_FILE", "OutputExistsError", "OutputLocation",
    "OutputMode", "RunSlot", "to_json",
]


def to_json(payload: dict) -> bytes:
    return json.dumps(payload, indent=2, sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class OutputLocation:
    """One output folder/prefix (a local path or `s3://`); plain data, so it travels to actors.

    `scope` is the job's: every read, write and delete here is checked against it where the file
    is opened (cluster.storage); None uses the scope of the process (`storage.use_scope`)."""

    uri: str
    scope: Scope | None = None

    @classmethod
    def at(cls, uri: str, scope: Scope | None = None) -> "OutputLocation":
        """The location with its URI in canonical spelling (absolute for local paths)."""
        return cls(storage.normalize(uri), scope)

    def path(self, name: str) -> str:
        return storage.join(self.uri, name)

    def names(self) -> list[str]:
        return storage.list_names(self.uri, scope=self.scope)

    def occupants(self) -> list[str]:
        """What the location holds besides a writer lease: its top-level names, or failing any,
        the files further down (an S3 prefix holding only `data/...` is not empty)."""
        names = [n for n in self.names() if n != LEASE_DIR]
        if names:
            return names
        try:
            refs = storage.list_files(self.uri, "", scope=self.scope)
        except FileNotFoundError:
            return []
        base = self.uri.rstrip("/") + "/"
        inside = [ref.uri[len(base):] if ref.uri.startswith(base) else ref.uri for ref in refs]
        return [name for name in inside if not name.startswith(f"{LEASE_DIR}/")]

    # ---- JSON files: _manifest.json, markers, _metrics.json -----------------------------------

    def write_json(self, name: str, payload: dict) -> None:
        """Write (or replace) a JSON file whole: readers see the old or the new one."""
        storage.write_bytes(self.path(name), to_json(payload), scope=self.scope)

    def read_json(self, name: str) -> dict | None:
        """A JSON file of the location, or None when there is none."""
        uri = self.path(name)
        if not storage.exists(uri, scope=self.scope):  # (a tenant's S3 policy answers 403 for missing keys)
            return None
        try:
            return json.loads(storage.read_bytes(uri, scope=self.scope))
        except FileNotFoundError:  # deleted since
            return None

    def withdraw_marker(self, name: str) -> None:
        """Delete `_SUCCESS.json` or `_PARTIAL.json` (the only single deletes outside GC)."""
        if name not in (SUCCESS_FILE, PARTIAL_FILE):
            raise ValueError(f"{name} is not a marker")
        storage.delete(self.path(name), scope=self.scope)

    def write_manifest(self, payload: dict) -> None:
        self.write_json(MANIFEST_FILE, payload)

    def read_manifest(self) -> dict | None:
        return self.read_json(MANIFEST_FILE)

    def write_metrics(self, metrics: dict) -> None:
        self.write_json(METRICS_FILE, metrics)

    def read_metrics(self) -> dict | None:
        return self.read_json(METRICS_FILE)

    # ---- output modes (modes.py) --------------------------------------------------------------

    def prepare(self, mode: str, fingerprint: dict) -> RunSlot:
        """The run slot of an inference run in `mode`; deletes nothing; OutputExistsError when
        the mode refuses (the message says why and what to do)."""
        return prepare_run(self, mode, fingerprint)

    def prepare_model_output(self, mode: str) -> dict | None:
        """A training output: the earlier summary when a finished model makes the run unnecessary."""
        return prepare_model(self, mode)

    def publish_model(self, summary: dict) -> None:
        """`_SUCCESS.json` of a training output: the model folder is complete (written last)."""
        self.write_json(SUCCESS_FILE, summary)

    # ---- the published snapshot ---------------------------------------------------------------

    def success(self) -> dict | None:
        """`_SUCCESS.json`: the snapshot of a run that succeeded (or a trained model's summary)."""
        return self.read_json(SUCCESS_FILE)

    def snapshot(self) -> dict | None:
        """The published marker: `_SUCCESS.json`, else `_PARTIAL.json`, else None."""
        return self.success() or self.read_json(PARTIAL_FILE)

    def snapshot_files(self, marker: dict | None = None) -> dict[str, str]:
        """{shard_id: part path} of the published snapshot (or of `marker`)."""
        marker = marker if marker is not None else self._published()
        if "files" not in marker:
            raise ValueError(f"{self.uri}: the marker lists no files (written by an older llmbatch, or a "
                             "training output); run the job again with output.mode: overwrite")
        return {f["shard_id"]: f["path"] for f in marker["files"]}

    def _published(self) -> dict:
        marker = self.snapshot()
        if marker is None:
            raise FileNotFoundError(f"no published snapshot ({SUCCESS_FILE} or {PARTIAL_FILE}) at {self.uri}: "
                                    "the job has not finished here")
        return marker

    def read_snapshot(self, columns: list[str] | None = None) -> pa.Table:
        """Exactly the files the published marker lists, as one table (only `columns`, if given).

        A publish that garbage-collects a file while this reads makes it start over from the
        new marker, so a reader gets one snapshot whole, never a mixture."""
        for _ in range(3):
            marker = self._published()
            try:
                return self.read_files(self.snapshot_files(marker).values(), columns)
            except FileNotFoundError:
                if (self.snapshot() or {}).get("snapshot_id") != marker.get("snapshot_id"):
                    continue  # republished meanwhile: read the new one
                raise
        raise RuntimeError(f"{self.uri} was republished three times while it was read; try again")

    def read_files(self, paths: Iterable[str], columns: list[str] | None = None) -> pa.Table:
        """These parts (paths relative to the location) as one table."""
        tables = [self.read_part_at(path, columns) for path in paths]
        return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})

    def errors_table(self) -> pa.Table:
        """The published snapshot's error rows (`_errors/<snapshot_id>.parquet`); empty when none."""
        marker = self._published()
        if marker.get("errors_file"):
            return read_parquet(self.path(marker["errors_file"]), None, self.scope)
        return empty_errors(marker.get("id_column") or "id", marker.get("id_type"))

    # ---- parts --------------------------------------------------------------------------------

    @staticmethod
    def part_path(run_id: str, shard_id: str) -> str:
        """`data/<run_id>/part-<shard_id>.parquet`, relative to the location."""
        return part_path(run_id, shard_id)

    def part_uri(self, run_id: str, shard_id: str) -> str:
        return self.path(part_path(run_id, shard_id))

    def committed_shards(self, run_id: str) -> set[str]:
        """The shards committed in run `run_id`'s folder."""
        names = storage.list_names(self.path(run_dir(run_id)), scope=self.scope)
        return {m.group(1) for name in names if (m := PART_NAME_RE.match(name))}

    def has_part(self, run_id: str, shard_id: str) -> bool:
        return storage.exists(self.part_uri(run_id, shard_id), scope=self.scope)

    def commit_part(self, run_id: str, shard_id: str, table: pa.Table) -> bool:
        """Write one shard's rows as one Parquet object; False if another attempt committed first."""
        data = to_parquet_bytes(table, {"llmbatch.shard_id": shard_id, "llmbatch.run_id": run_id,
                                        "llmbatch.committed_at": time.time()})
        return storage.put_if_absent(self.part_uri(run_id, shard_id), data, scope=self.scope)

    def read_part_at(self, relative_path: str, columns: list[str] | None = None) -> pa.Table:
        """One part by its path relative to the location (as markers list them)."""
        parse_part_path(relative_path)  # a path outside our layout is refused, never opened
        return read_parquet(self.path(relative_path), columns, self.scope)
