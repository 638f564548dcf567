"""What a `retry_errors` run redoes, planned from the snapshot published at the output.

It needs a published marker (`_SUCCESS.json` or `_PARTIAL.json`) whose fingerprint equals this
run's. Each shard whose part holds error rows of the kinds asked for ("retriable" by default; every
kind with `llmbatch retry --all`) is redone from that part: the actor keeps its other rows and
writes the part again whole, in the new run's folder. Shards of the plan the snapshot has no part
for (skipped or not reached by a deadline) are run whole. Every other part is kept as it is: the
new snapshot lists it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from workers.inference.shard_task import ERROR_KINDS, RETRIABLE
from workers.output.location import OutputLocation


@dataclass
class RetryPlan:
    kinds: tuple[str, ...]
    base_parts: dict[str, str] = field(default_factory=dict)  # shard id -> part to redo errors of
    fresh: set[str] = field(default_factory=set)  # shards with no part in the snapshot
    kept: dict[str, str] = field(default_factory=dict)  # shard id -> part listed again as it is
    error_rows: int = 0  # the rows to redo

    @property
    def todo(self) -> set[str]:
        return set(self.base_parts) | self.fresh


class RetryRefused(ValueError):
    """retry_errors cannot run here (no snapshot, or one of another fingerprint)."""

    def __reduce__(self):
        return (RetryRefused, self.args)


def retry_kinds(include_permanent: bool) -> tuple[str, ...]:
    return ERROR_KINDS if include_permanent else (RETRIABLE,)


def marker_files(marker: dict) -> dict[str, str]:
    """shard id -> part path (relative to the output) of the files a marker lists."""
    return {f["shard_id"]: f["path"] for f in marker.get("files") or []}


def _affected_shards(output: OutputLocation, marker: dict, kinds: tuple[str, ...]) -> dict[str, int]:
    """shard id -> error rows of these kinds, from the snapshot's `_errors` file (or, without
    one, from the parts the marker lists with error rows)."""
    errors = output.errors_table() if marker.get("errors_file") else None
    if errors is None:
        return {f["shard_id"]: int(f.get("error_rows") or 0) for f in marker.get("files") or []
                if f.get("error_rows")}
    kind = errors.column("error_kind")
    mask = pc.is_in(pc.fill_null(kind, RETRIABLE), value_set=pa.array(list(kinds), kind.type))
    affected: dict[str, int] = {}
    for sid in errors.filter(mask).column("shard_id").to_pylist():
        affected[sid] = affected.get(sid, 0) + 1
    return affected


def plan_retry(output: OutputLocation, marker: dict | None, planned: list[str],
               include_permanent: bool = False) -> RetryPlan:
    """The retry of `marker`'s snapshot over the plan's shard ids (`planned`).

    The caller has checked that the marker's fingerprint is this run's."""
    if marker is None:
        raise RetryRefused(f"output {output.uri} has no published snapshot (_SUCCESS.json or _PARTIAL.json): "
                           "retry_errors redoes the error rows of a finished run")
    kinds = retry_kinds(include_permanent)
    files = marker_files(marker)
    affected = _affected_shards(output, marker, kinds)
    plan = RetryPlan(kinds)
    for sid in planned:
        if sid not in files:
            plan.fresh.add(sid)
        elif sid in affected:
            plan.base_parts[sid] = files[sid]
            plan.error_rows += affected[sid]
        else:
            plan.kept[sid] = files[sid]
    return plan
