"""The output location of a job, and the one place its commit protocol lives.

Layout: `_manifest.json` (written first), one `part-<shard_id>.parquet` per shard (each written
whole with one create-if-absent put: a shard is committed exactly once, even when a retried
attempt races the first), and `_SUCCESS.json` (written last, when every shard is accounted for).
A training job's location holds the exported model and `_SUCCESS.json`.

Runners, inference actors, evaluation and the report all go through an `OutputLocation`; none
of them spells a file name of this layout or calls `cluster.storage` with an output URI.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster import storage
from cluster.storage.scope import Scope

PART_RE = re.compile(r"^part-([0-9a-f]+)\.parquet$")
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS.json"
METRICS_FILE = "_metrics.json"
TOTAL_COLUMNS = ("error", "prompt_tokens", "completion_tokens")


class OutputMode(StrEnum):
    """What a run does with what its output location already holds (`output.mode`)."""

    ERROR_IF_EXISTS = "error_if_exists"
    OVERWRITE = "overwrite"
    RESUME = "resume"
    RETRY_ERRORS = "retry_errors"


class OutputExistsError(RuntimeError):
    pass


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

    # ---- JSON files: _manifest.json, _SUCCESS.json, _metrics.json ---------------------------

    def write_json(self, name: str, payload: dict) -> None:
        """Write (or replace) a JSON file whole: readers see the old or the new one."""
        storage.write_bytes(self.path(name), to_json(payload), scope=self.scope)

    def read_json(self, name: str) -> dict | None:
        """A JSON file of the location, or None when there is none."""
        uri = self.path(name)
        if not storage.exists(uri, scope=self.scope):
            return None
        return json.loads(storage.read_bytes(uri, scope=self.scope))

    def write_manifest(self, payload: dict) -> None:
        self.write_json(MANIFEST_FILE, payload)

    def read_manifest(self) -> dict | None:
        return self.read_json(MANIFEST_FILE)

    def publish(self, summary: dict) -> None:
        """`_SUCCESS.json`: the run is done; written last."""
        self.write_json(SUCCESS_FILE, summary)

    def success(self) -> dict | None:
        """The summary of the run that finished here, or None."""
        return self.read_json(SUCCESS_FILE)

    def write_metrics(self, metrics: dict) -> None:
        self.write_json(METRICS_FILE, metrics)

    def read_metrics(self) -> dict | None:
        return self.read_json(METRICS_FILE)

    # ---- output modes -------------------------------------------------------------------------

    def prepare(self, mode: str, run_key: dict | None, *, parts_resumable: bool = True) -> dict | None:
        """Apply an output mode before any work; the earlier summary when there is nothing to do.

        Inference outputs are resumable part by part (`parts_resumable`): any object refuses
        `error_if_exists`, and `resume` needs the same `run_key` (task, model, input, params),
        since resuming into a folder written by a different run would mix incompatible parts.
        A training output counts only once finished: `error_if_exists` refuses a finished one,
        and `resume` of a finished one returns its summary (the run is already done).
        """
        mode = OutputMode(mode)
        names = self.names()
        finished = SUCCESS_FILE in names
        if mode is OutputMode.OVERWRITE and names:
            storage.delete_prefix(self.uri, scope=self.scope)
        elif mode is OutputMode.ERROR_IF_EXISTS and parts_resumable and names:
            raise OutputExistsError(f"output {self.uri} already holds {len(names)} object(s); "
                                    "use output.mode: overwrite or resume")
        elif mode is OutputMode.ERROR_IF_EXISTS and finished:
            raise OutputExistsError(f"output {self.uri} already holds a trained model "
                                    "(output.mode: error_if_exists)")
        elif mode is OutputMode.RESUME and finished and not parts_resumable:
            return self.success()
        elif mode is OutputMode.RESUME and MANIFEST_FILE in names:
            previous = self.read_manifest() or {}
            if previous.get("run_key") != run_key:
                raise OutputExistsError(
                    f"output {self.uri} holds the output of a different job (task, model, input or params "
                    "differ); resume needs the same manifest, or use output.mode: overwrite"
                )
        storage.delete(self.path(SUCCESS_FILE), scope=self.scope)  # a resumed run is not done until it says so
        return None

    # ---- parts --------------------------------------------------------------------------------

    def part_uri(self, shard_id: str) -> str:
        return self.path(f"part-{shard_id}.parquet")

    def part_names(self) -> list[str]:
        return [name for name in self.names() if PART_RE.match(name)]

    def committed_shards(self) -> set[str]:
        return {m.group(1) for name in self.names() if (m := PART_RE.match(name))}

    def has_part(self, shard_id: str) -> bool:
        return storage.exists(self.part_uri(shard_id), scope=self.scope)

    def commit_part(self, shard_id: str, table: pa.Table) -> bool:
        """Write one shard's rows as one Parquet object; False if another attempt committed first."""
        sink = pa.BufferOutputStream()
        metadata = {b"llmbatch.shard_id": shard_id.encode(), b"llmbatch.committed_at": str(time.time()).encode()}
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}), sink,
                       compression="zstd")
        return storage.put_if_absent(self.part_uri(shard_id), sink.getvalue().to_pybytes(), scope=self.scope)

    def read_part(self, shard_id: str, columns: list[str] | None = None) -> pa.Table:
        return _read_parquet(self.part_uri(shard_id), columns, self.scope)

    def read_parts(self, columns: list[str] | None = None) -> pa.Table:
        """The committed parts as one table (only `columns`, if given)."""
        names = self.part_names()
        if not names:
            raise FileNotFoundError(f"no output parts (part-*.parquet) at {self.uri}")
        tables = [_read_parquet(self.path(name), columns, self.scope) for name in names]
        return pa.concat_tables(tables, promote_options="permissive")

    def totals(self, shard_ids: set[str]) -> dict:
        """Counts over the committed parts of these shards (so resumed runs report whole-job totals)."""
        totals = {"rows": 0, "error_rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
        for sid in sorted(shard_ids):
            table = self.read_part(sid, list(TOTAL_COLUMNS))
            totals["rows"] += table.num_rows
            totals["error_rows"] += table.num_rows - table.column("error").null_count
            totals["prompt_tokens"] += int(pc.sum(table.column("prompt_tokens")).as_py() or 0)
            totals["completion_tokens"] += int(pc.sum(table.column("completion_tokens")).as_py() or 0)
        return totals

    # ---- the whole location -------------------------------------------------------------------

    def delete_all(self) -> None:
        storage.delete_prefix(self.uri, scope=self.scope)


def _read_parquet(uri: str, columns: list[str] | None, scope: Scope | None) -> pa.Table:
    with storage.open_input(uri, scope=scope) as f:
        return pq.read_table(f, columns=columns)
