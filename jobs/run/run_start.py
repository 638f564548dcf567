"""Where an inference run starts: the parts it lists again from the published snapshot, the shards
its own folder already holds, the retry plan, and the shards left to do.

- `resume` of the same fingerprint: the published snapshot's parts are kept (a partial run is
  completed, a finished one republished as it is), and so are the shards committed in the run's
  folder (`data/<run_id>/`) before a crash; the rest is done.
- `retry_errors`: jobs.run.retry_plan decides (error rows redone from their base part, shards the
  snapshot lacks run whole, the other parts kept).
- `overwrite`, `error_if_exists`, or `resume` after a change: every shard, in a new run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs.run.preflight import Plan
from jobs.run.retry_plan import RetryPlan, RetryRefused, marker_files, plan_retry
from workers.inference.shards import Shard
from workers.output.fingerprint import fingerprint_diff, same_fingerprint
from workers.output.location import OutputLocation, RunSlot
from workers.output.modes import OutputMode


@dataclass
class RunStart:
    carried: dict[str, str] = field(default_factory=dict)  # shard id -> snapshot part listed again
    base_parts: dict[str, str] = field(default_factory=dict)  # retry: shard id -> part to redo errors of
    done_here: set[str] = field(default_factory=set)  # committed in this run's folder already
    todo: list[Shard] = field(default_factory=list)
    retry: RetryPlan | None = None

    @property
    def kept(self) -> dict[str, str]:
        """The carried parts listed again unchanged (not retried)."""
        return {sid: path for sid, path in self.carried.items() if sid not in self.base_parts}

    @property
    def retry_kinds(self) -> tuple[str, ...]:
        return self.retry.kinds if self.retry is not None else ()


def run_start(mode: str, output: OutputLocation, fingerprint: dict, plan: Plan, slot: RunSlot,
              retry_all: bool = False) -> RunStart:
    planned = [s.shard_id for s in plan.shards]
    marker = slot.previous if slot.previous is not None else output.snapshot()
    same = marker is not None and same_fingerprint(marker.get("fingerprint"), fingerprint)
    start = RunStart()
    wanted: set[str] | None = None  # None: every shard not carried
    if OutputMode(mode) is OutputMode.RETRY_ERRORS:
        if marker is not None and not same:
            changes = "; ".join(fingerprint_diff(marker.get("fingerprint"), fingerprint))
            raise RetryRefused(f"output {output.uri}: retry_errors redoes rows of the published run, "
                               f"and this one differs: {changes}")
        start.retry = plan_retry(output, marker, planned, include_permanent=retry_all)
        start.base_parts = dict(start.retry.base_parts)
        start.carried = {**start.retry.kept, **start.retry.base_parts}
        wanted = start.retry.todo
    elif OutputMode(mode) is OutputMode.RESUME and same:
        files = marker_files(marker)
        start.carried = {sid: files[sid] for sid in planned if sid in files}
    if slot.resumed:
        start.done_here = output.committed_shards(slot.run_id) & set(planned)
        start.carried = {sid: p for sid, p in start.carried.items() if sid not in start.done_here}
    start.todo = [s for s in plan.shards if s.shard_id not in start.done_here
                  and (s.shard_id in wanted if wanted is not None else s.shard_id not in start.carried)]
    return start


def plan_record(manifest, plan: Plan, slot: RunSlot, job_id: str, fingerprint: dict, created_at: float) -> dict:
    """`_manifest.json`: the plan of the run started here (what resume, retry, evaluation and the
    report read back: the manifest, the fingerprint, each shard's file, rows and rows left out)."""
    return {
        "run_id": slot.run_id, "job_id": job_id, "mode": manifest.output.mode,
        "manifest": manifest.model_dump(mode="json"), "fingerprint": fingerprint, "id_type": plan.id_type,
        "shards": [{"shard_id": s.shard_id, "file": s.file_uri, "rows": [s.row_start, s.row_end],
                    "skip_rows": list(s.skip_rows)} for s in plan.shards],
        "dropped": plan.dropped, "created_at": created_at,
    }
