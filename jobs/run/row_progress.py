"""Whole-job row counts of an inference run while it works: the parts an earlier run left (a
resumed or retried run counts them from the start), the shards this run committed, and the
rows of the shards still in flight, batch by batch."""

from __future__ import annotations

import threading
import time

from jobs.run.outcome import PartCounts
from workers.inference.shard_task import ShardReport


class RowProgress:
    def __init__(self, rows_total: int, earlier: PartCounts):
        self.rows_total = rows_total
        self.earlier = earlier
        self.committed = PartCounts()  # this run's committed shards
        self.in_flight: dict[str, tuple[int, int, int]] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()  # reports and batch progress come from the pool's thread(s)

    def on_report(self, report: ShardReport) -> None:
        with self._lock:
            self.in_flight.pop(report.shard_id, None)
            # A retried shard redid only its error rows: its other rows were counted as earlier.
            retry = report.retried_rows is not None
            self.committed.add(PartCounts(report.retried_rows if retry else report.rows,
                                          0 if retry else report.error_rows,
                                          report.prompt_tokens, report.completion_tokens))

    def on_batches(self, shards: dict[str, tuple[int, int, int]]) -> None:
        with self._lock:
            self.in_flight = dict(shards)

    def fields(self) -> dict:
        """The JobProgress fields: rows done and errors over the whole job, rate and ETA of this run."""
        with self._lock:
            flying = list(self.in_flight.values())
            run_rows = self.committed.rows + sum(v[0] for v in flying)
            errors = self.earlier.error_rows + self.committed.error_rows + sum(v[1] for v in flying)
            tokens = self.committed.completion_tokens + sum(v[2] for v in flying)
        done = min(self.earlier.rows + run_rows, self.rows_total) if self.rows_total else self.earlier.rows + run_rows
        elapsed = time.monotonic() - self.started
        rate = run_rows / elapsed if elapsed > 0 else 0.0
        left = max(self.rows_total - done, 0)
        return {"rows": done, "rows_done": done, "rows_total": self.rows_total, "error_rows": errors,
                "completion_tokens": tokens, "rows_per_s": round(rate, 2),
                "eta_s": round(left / rate, 1) if rate > 0 else None}
