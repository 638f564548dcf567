"""The FastAPI application: wiring of store, scheduler, routes, limits, errors and metrics."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from jobs.api import errors, metrics, routes_admin, routes_jobs, routes_schedules, status_page
from jobs.api.auth_limit import DEFAULT_FAILURES_PER_MINUTE, FailureLimiter
from jobs.api.headers import SecurityHeaders
from jobs.api.limits import DEFAULT_MAX_BODY, BodySizeLimit
from jobs.service.store.job_store import Store


def create_app(store: Store, scheduler=None, *, max_body_bytes: int = DEFAULT_MAX_BODY, docs: bool = False,
               auth_failures_per_minute: int = DEFAULT_FAILURES_PER_MINUTE) -> FastAPI:
    """`scheduler` (a jobs.service.scheduler.Scheduler) is started with the app and stopped with it;
    without one the app only records and reports (tests, or API-only replicas). `docs` serves
    /docs and /openapi.json (off by default: `app.openapi()` gives the schema to tests)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if scheduler is not None:
            scheduler.start()
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.stop()

    app = FastAPI(title="llmbatch", version="1", lifespan=lifespan,
                  description="Queue batch-inference and training jobs on a shared Ray cluster.",
                  openapi_url="/openapi.json" if docs else None, docs_url="/docs" if docs else None,
                  redoc_url=None)
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.metrics = metrics.Metrics(store)
    app.state.auth_failures = FailureLimiter(auth_failures_per_minute)
    errors.install(app)
    app.middleware("http")(app.state.metrics.middleware)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last: outermost, so every answer carries the headers
    app.include_router(routes_jobs.router)
    app.include_router(routes_schedules.router)
    app.include_router(routes_admin.router)
    app.include_router(metrics.router)
    app.include_router(status_page.router)

    @app.get("/healthz", summary="Liveness: the store answers")
    def healthz(request: Request) -> dict:
        request.app.state.store.count_by_state()
        sched = request.app.state.scheduler
        return {"ok": True, "scheduler": sched.id if sched is not None else None}

    return app
