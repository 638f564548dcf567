"""The output location and its commit protocol.

Layout: `_manifest.json` (written first), one `part-<shard_id>.parquet` per shard (each written
whole with one create-if-absent put: a shard is committed exactly once, even when a retried
attempt races the first), and `_SUCCESS.json` (written last, when every shard is accounted for).
"""

from __future__ import annotations

import json
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq

from cluster import storage

PART_RE = re.compile(r"^part-([0-9a-f]+)\.parquet$")
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS.json"


class OutputExistsError(RuntimeError):
    pass


def part_uri(output_uri: str, shard_id: str) -> str:
    return storage.join(output_uri, f"part-{shard_id}.parquet")


def committed_shards(output_uri: str) -> set[str]:
    return {m.group(1) for name in storage.list_names(output_uri) if (m := PART_RE.match(name))}


def prepare_output(output_uri: str, mode: str, run_key: dict) -> None:
    """Apply the manifest's output mode before any work.

    `run_key` says what the outputs depend on (task, model, input, params): resuming into a
    folder written by a different run would mix incompatible parts, so that is refused.
    """
    names = storage.list_names(output_uri)
    if mode == "overwrite" and names:
        storage.delete_prefix(output_uri)
    elif mode == "error_if_exists" and names:
        raise OutputExistsError(
            f"output {output_uri} already holds {len(names)} object(s); use output.mode: overwrite or resume"
        )
    elif mode == "resume" and MANIFEST_FILE in names:
        previous = json.loads(storage.read_bytes(storage.join(output_uri, MANIFEST_FILE)))
        if previous.get("run_key") != run_key:
            raise OutputExistsError(
                f"output {output_uri} holds the output of a different job (task, model, input or params "
                "differ); resume needs the same manifest, or use output.mode: overwrite"
            )
    storage.delete(storage.join(output_uri, SUCCESS_FILE))  # a resumed run is not done until it says so


def write_json(uri: str, payload: dict) -> None:
    storage.write_bytes(uri, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def commit_part(output_uri: str, shard_id: str, table: pa.Table) -> bool:
    """Write one shard's rows as one Parquet object; False if another attempt committed first."""
    sink = pa.BufferOutputStream()
    metadata = {b"llmbatch.shard_id": shard_id.encode(), b"llmbatch.committed_at": str(time.time()).encode()}
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata}), sink,
                   compression="zstd")
    return storage.put_if_absent(part_uri(output_uri, shard_id), sink.getvalue().to_pybytes())


def output_totals(output_uri: str, shard_ids: set[str]) -> dict:
    """Counts over the committed parts of these shards (so resumed runs report whole-job totals)."""
    totals = {"rows": 0, "error_rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for sid in sorted(shard_ids):
        fs, path = storage.filesystem(part_uri(output_uri, sid))
        table = pq.read_table(path, filesystem=fs, columns=["error", "prompt_tokens", "completion_tokens"])
        totals["rows"] += table.num_rows
        totals["error_rows"] += table.num_rows - table.column("error").null_count
        totals["prompt_tokens"] += int(pa.compute.sum(table.column("prompt_tokens")).as_py() or 0)
        totals["completion_tokens"] += int(pa.compute.sum(table.column("completion_tokens")).as_py() or 0)
    return totals
