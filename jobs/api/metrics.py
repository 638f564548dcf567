"""/metrics in Prometheus text format: request counts and, read at scrape time, jobs by state.

Behind a token (any; Prometheus sends it with `authorization: {credentials: ...}`), and no label
names a tenant: routes are templates (`/v1/jobs/{job_id}`), job counts are by state only."""

from __future__ import annotations

import time

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from jobs.api.deps import principal
from jobs.lifecycle import JobState
from jobs.service.auth import Principal
from jobs.service.store.job_store import Store

router = APIRouter()


class _JobCollector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        g = GaugeMetricFamily("llmbatch_jobs", "Jobs in the store by state", labels=["state"])
        counts = self.store.count_by_state()
        for state in JobState:
            g.add_metric([state.value], counts.get(state, 0))
        yield g


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
