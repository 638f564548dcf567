"""/metrics in Prometheus text format: request counts and, read from the store at scrape time,
the jobs' figures (jobs/service/store/job_metrics.py), so every replica serves the same numbers.

Behind a token (any; Prometheus sends it with `authorization: {credentials: ...}`), and no label
names a tenant, a job or a queue: routes are templates (`/v1/jobs/{job_id}`), job figures are
by state only or summed over all jobs.

A job's rows, error rows and tokens count in the `_total` sums as long as the store keeps the
job: the sums only grow while jobs run and end, and would drop if rows were ever deleted.
"""

from __future__ import annotations

import math
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from jobs.api.deps import principal
from jobs.lifecycle import JobState
from jobs.service.auth import Principal
from jobs.service.store import job_metrics
from jobs.service.store.job_store import Store

router = APIRouter()

COUNTERS = {  # name (Prometheus adds _total), the key in job_metrics.totals(), help
    "llmbatch_job_rows": ("rows", "Input rows processed, over every job (ended: its summary; else its progress)"),
    "llmbatch_job_error_rows": ("error_rows", "Rows whose output is an error, over every job"),
    "llmbatch_job_completion_tokens": ("completion_tokens", "Completion tokens generated, over every job"),
    "llmbatch_job_failed_runs": ("failed_runs", "Runs that failed (each retry's failure counts once)"),
}


def _buckets(h: job_metrics.Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(le) else floatToGoString(le), n) for le, n in h.sorted_buckets()]


class _JobCollector:
    def __init__(self, store: Store):
        self.store = store
        self.figures = job_metrics.FigureCache(store.engine)

    def collect(self):
        g = GaugeMetricFamily("llmbatch_jobs", "Jobs in the store by state", labels=["state"])
        counts = self.store.count_by_state()
        for state in JobState:
            g.add_metric([state.value], counts.get(state, 0))
        yield g
        yield GaugeMetricFamily("llmbatch_queue_depth", "Jobs queued (waiting to start, retries included)",
                                value=counts.get(JobState.QUEUED, 0))
        figures = self.figures.read()
        for name, (key, doc) in COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=figures.totals[key])
        h = HistogramMetricFamily("llmbatch_shard_seconds", "Wall time of one shard attempt, over every job")
        h.add_metric([], _buckets(figures.shard_seconds), figures.shard_seconds.sum)
        yield h
        d = HistogramMetricFamily("llmbatch_job_duration_seconds",
                                  "Wall time of ended jobs' last run (finished - started), by end state",
                                  labels=["state"])
        for state, hist in figures.job_seconds.items():
            d.add_metric([state.value], _buckets(hist), hist.sum)
        yield d


class Metrics:
    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        self.requests = Counter("llmbatch_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("llmbatch_http_request_seconds", "HTTP request latency", ["route"],
                                 registry=self.registry)
        self.registry.register(_JobCollector(store))

    async def middleware(self, request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        # The route template, not the raw path: one series per endpoint, not per job id.
        route = getattr(request.scope.get("route"), "path", "unmatched")
        self.requests.labels(request.method, route, str(response.status_code)).inc()
        self.latency.labels(route).observe(time.perf_counter() - start)
        return response


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, _who: Annotated[Principal, Depends(principal)]) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
