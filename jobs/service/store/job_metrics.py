"""Figures over the jobs in the store, for /metrics: computed by the database at scrape time.

Every replica reads the same rows, so replicas and restarts agree, and a scrape is a few
aggregate queries (the database sums; nothing per job in Python).
- Totals (rows, error rows, completion tokens, failed runs) are sums over every job of its
  `counted` figures: the most of each its progress and summary have reported (counted.py), so a
  job's share never drops when a retry or resume starts its progress over. A job recorded before
  that column existed counts its summary's figures if it ended, else its latest progress.
- Shard seconds: the sum over jobs of each job's latency histogram (`shard_seconds_sum`,
  `_count`, `_buckets` {"<le>": cumulative count}), counted the same way; jobs without one add nothing.
- Job seconds: finished_at - started_at (the last run's wall time) of every ended job that ran,
  by end state, in JOB_SECONDS_BUCKETS.
An ended job's figures never change, so `FigureCache` sums the jobs that ended over SETTLE_S ago
once, and each scrape reads only the jobs still active or ended since (measured: 50,000 ended
jobs take 0.5 s to sum on SQLite, 1 s on PostgreSQL; the cached part then costs nothing).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, Float, and_, case, cast, extract, func, null, or_, select, true

from jobs.lifecycle import ACTIVE_STATES, TERMINAL_STATES, JobState
from jobs.service.store.tables import jobs, utcnow

# Job wall times run from seconds (a small file) to a day; Prometheus' default buckets stop at 10 s.
JOB_SECONDS_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
TOTALS = ("rows", "error_rows", "completion_tokens")
SETTLE_S = 600.0  # ended longer ago than this (more than any clock skew between replicas): cached


@dataclass
class Histogram:
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count (+Inf incl.)
    sum: float = 0.0
    count: float = 0.0

    def __add__(self, other: "Histogram") -> "Histogram":
        les = set(self.buckets) | set(other.buckets)
        return Histogram({le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in les},
                         self.sum + other.sum, self.count + other.count)

    def sorted_buckets(self) -> list[tuple[float, float]]:
        return sorted({**self.buckets, math.inf: max(self.buckets.get(math.inf, 0.0), self.count)}.items())


@dataclass
class Figures:
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*TOTALS, "failed_runs"), 0.0))
    shard_seconds: Histogram = field(default_factory=Histogram)
    job_seconds: dict[JobState, Histogram] = field(default_factory=lambda: _no_job_seconds())

    def __add__(self, other: "Figures") -> "Figures":
        return Figures({k: v + other.totals[k] for k, v in self.totals.items()}, self.shard_seconds + other.shard_seconds,
                       {s: h + other.job_seconds[s] for s, h in self.job_seconds.items()})


def _no_job_seconds() -> dict[JobState, Histogram]:
    """Every end state with every bucket, at zero: the series exist before the first job ends."""
    return {s: Histogram(dict.fromkeys((*JOB_SECONDS_BUCKETS, math.inf), 0.0)) for s in TERMINAL_STATES}


def read_figures(engine: Engine, where) -> Figures:
    """The figures of the jobs matching `where` (a condition on the jobs table)."""
    with engine.connect() as conn:
        pg = conn.dialect.name == "postgresql"
        return Figures(_totals(conn, where), _shard_seconds(conn, where, pg), _job_seconds(conn, where, pg))


class FigureCache:
    """read(): the figures of every job, the settled part (ended before now - SETTLE_S) summed
    once and extended as time passes, the rest read afresh. Thread-safe."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._settled, self._until = Figures(), None  # the figures of the jobs ended at or before _until

    def read(self, now: datetime | None = None) -> Figures:
        cutoff = (now or utcnow()) - timedelta(seconds=SETTLE_S)
        ended = jobs.c.state.in_(TERMINAL_STATES)
        with self._lock:
            if self._until is None or cutoff - self._until > timedelta(seconds=SETTLE_S / 10):
                newly = and_(ended, jobs.c.finished_at <= cutoff)
                if self._until is not None:
                    newly = and_(newly, jobs.c.finished_at > self._until)
                self._settled, self._until = self._settled + read_figures(self.engine, newly), cutoff
            until = self._until
            settled = self._settled
        live = or_(jobs.c.state.in_(ACTIVE_STATES), jobs.c.finished_at.is_(None), jobs.c.finished_at > until)
        return settled + read_figures(self.engine, live)


def _totals(conn, where) -> dict[str, float]:
    ended = jobs.c.state.in_(TERMINAL_STATES)

    def figure(key: str):
        published = jobs.c.summary[key].as_float()
        reported = case((and_(ended, published.is_not(None)), published), else_=jobs.c.progress[key].as_float())
        return func.coalesce(func.sum(func.coalesce(jobs.c.counted[key].as_float(), reported)), 0.0)

    q = select(*(figure(k) for k in TOTALS), func.coalesce(func.sum(jobs.c.failures), 0)).where(where)
    row = conn.execute(q).one()
    return {**{k: float(v) for k, v in zip(TOTALS, row)}, "failed_runs": float(row[-1])}


def _shard_seconds(conn, where, pg: bool) -> Histogram:
    """The progress histograms added bucket by bucket. Bucket keys are read as numbers ("1" and
    "1.0", "+Inf" and "inf" alike); a key that is not one is left out."""
    def figure(key: str):
        return func.coalesce(func.sum(func.coalesce(jobs.c.counted[key].as_float(), jobs.c.progress[key].as_float())),
                             0.0)

    sums = select(figure("shard_seconds_sum"), figure("shard_seconds_count")).where(where)
    # The histogram object of each job (its JSON parsed once), expanded to (key, value) rows.
    if pg:
        h = func.coalesce(jobs.c.counted["shard_seconds_buckets"], jobs.c.progress["shard_seconds_buckets"])
    else:
        h = func.coalesce(func.json_extract(jobs.c.counted, "$.shard_seconds_buckets"),
                          func.json_extract(jobs.c.progress, "$.shard_seconds_buckets"))
    typeof, each = (func.json_typeof, func.json_each_text) if pg else (func.json_type, func.json_each)
    per_job = select(h.label("h")).where(where).subquery()
    pairs = each(case((typeof(per_job.c.h) == "object", per_job.c.h), else_=null())).table_valued("key", "value")
    q = (select(pairs.c.key, func.sum(cast(pairs.c.value, Float)))
         .select_from(per_job.join(pairs, true())).group_by(pairs.c.key))
    total, count = conn.execute(sums).one()
    out = Histogram({}, float(total), float(count))
    for key, value in conn.execute(q).all():
        try:
            le = float(key)
        except (TypeError, ValueError):
            continue
        if not math.isnan(le):
            out.buckets[le] = out.buckets.get(le, 0.0) + float(value or 0)
    return out


def _job_seconds(conn, where, pg: bool) -> dict[JobState, Histogram]:
    if pg:
        seconds = extract("epoch", jobs.c.finished_at - jobs.c.started_at)
    else:  # SQLite keeps the timestamps as text, which julianday() reads
        seconds = (func.julianday(jobs.c.finished_at) - func.julianday(jobs.c.started_at)) * 86400.0
    q = (select(jobs.c.state, *(func.sum(case((seconds <= le, 1), else_=0)) for le in JOB_SECONDS_BUCKETS),
                func.coalesce(func.sum(seconds), 0.0), func.count())
         .where(where, jobs.c.state.in_(TERMINAL_STATES), jobs.c.started_at.is_not(None),
                jobs.c.finished_at.is_not(None))
         .group_by(jobs.c.state))
    out = _no_job_seconds()
    for state, *counts, total, count in conn.execute(q).all():
        buckets = {le: float(n or 0) for le, n in zip(JOB_SECONDS_BUCKETS, counts)}
        out[JobState(state)] = Histogram({**buckets, math.inf: float(count)}, float(total), float(count))
    return out
