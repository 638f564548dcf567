"""How an inference run ended: succeeded, partial or failed, with the reasons, from what it left.

- every shard of the plan has a part and error rows / rows <= max_error_rate: succeeded;
- shards skipped (`on_shard_failure: skip`), the deadline (`timeout_s`) reached, or error rows
  above `max_error_rate`: partial (published as `_PARTIAL.json`, `reasons` saying which);
- no row produced an output at all (every row an error, or nothing committed), or shards missing
  for no reason the manifest allows: failed (nothing published).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow.compute as pc

from jobs.lifecycle import JobState
from workers.output.location import OutputLocation
from workers.output.parquet_io import column_total

COUNT_COLUMNS = ["error", "prompt_tokens", "completion_tokens"]


@dataclass
class PartCounts:
    rows: int = 0
    error_rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "PartCounts") -> None:
        self.rows += other.rows
        self.error_rows += other.error_rows
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict:
        return {"rows": self.rows, "error_rows": self.error_rows, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


def part_counts(output: OutputLocation, path: str) -> PartCounts:
    """The counts of one part (`path` relative to the output), from three small columns."""
    t = output.read_part_at(path, COUNT_COLUMNS)
    return PartCounts(t.num_rows, t.num_rows - t.column("error").null_count,
                      int(pc.sum(t.column("prompt_tokens")).as_py() or 0),
                      column_total(t.column("completion_tokens")))  # a list per row when params.n > 1


def total(counts: dict[str, PartCounts]) -> PartCounts:
    whole = PartCounts()
    for c in counts.values():
        whole.add(c)
    return whole


@dataclass
class Outcome:
    state: JobState
    reasons: list[str] = field(default_factory=list)  # why partial
    error: str | None = None  # why failed

    @property
    def publishes(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.PARTIAL)


def percent(x: float) -> str:
    return f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"


def decide(*, planned: set[str], present: set[str], counts: PartCounts, skipped: dict[str, str],
           timed_out: bool, timeout_s: float | None, max_error_rate: float) -> Outcome:
    """The outcome of a run whose pool ended without a shard failure that fails the job.

    `planned`: the plan's shard ids; `present`: those with a part in the snapshot to publish;
    `skipped`: shard id -> last error of shards skipped by `on_shard_failure: skip`."""
    reasons: list[str] = []
    missing = planned - present
    unexplained = missing - set(skipped)
    if unexplained and not timed_out:
        return Outcome(JobState.FAILED, error=f"{len(unexplained)} shard(s) not committed: {sorted(unexplained)[:5]}")
    if counts.rows == 0:
        return Outcome(JobState.FAILED, error="nothing to publish: no shard was committed")
    if counts.error_rows == counts.rows:
        return Outcome(JobState.FAILED, error=f"every row is an error ({counts.rows} rows): no row produced an "
                                              "output, nothing was published")
    if skipped:
        first = sorted(skipped)[0]
        reasons.append(f"{len(skipped)} shard(s) skipped after failing (on_shard_failure: skip), "
                       f"e.g. {first}: {skipped[first]}")
    if timed_out and unexplained:
        reasons.append(f"deadline reached (timeout_s: {timeout_s:g}): {len(unexplained)} of {len(planned)} "
                       "shard(s) not done")
    elif timed_out:
        reasons.append(f"deadline reached (timeout_s: {timeout_s:g}): the shards in flight were stopped")
    rate = counts.error_rows / counts.rows
    if rate > max_error_rate:
        reasons.append(f"error rows {counts.error_rows}/{counts.rows} ({percent(rate)}) above max_error_rate "
                       f"{percent(max_error_rate)}")
    return Outcome(JobState.PARTIAL if reasons else JobState.SUCCEEDED, reasons)
