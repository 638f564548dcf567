"""Request and response bodies of the HTTP API. The manifest is wrapped, not extended: the
manifest schema stays about the work, the envelope about how the service should run it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.api.job_view import figures
from jobs.lifecycle import JobState
from jobs.service.cron import valid_cron


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cron: str = Field(..., min_length=1, max_length=120, description="five-field cron, UTC")
    on_missed: Literal["run_once", "skip"] = Field(
        "run_once", description="a period missed while the service was down: run it once on start, or skip it")

    @field_validator("cron")
    @classmethod
    def _valid(cls, expression: str) -> str:
        if len(expression.split()) != 5 or not valid_cron(expression):
            raise ValueError("not a valid five-field cron expression")
        return expression


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    manifest: dict[str, Any] = Field(..., description="the job manifest (schema v1); output.uri may "
                                     "hold {date}, {datetime}, {run_id}")
    queue: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="the same key (per token) returns the same job")
    max_attempts: int = Field(1, ge=1, le=20, description="runs allowed, the first included")
    retry_backoff_s: float = Field(10.0, ge=0, le=86400, description="wait before retry n: backoff * 2^(n-1)")
    timeout_s: float | None = Field(None, gt=0, le=30 * 86400,
                                    description="per run, a hard stop: the job fails after it (the manifest's "
                                    "timeout_s instead ends the run partial, keeping what finished)")
    schedule: ScheduleSpec | None = None


class JobOut(BaseModel):
    id: str
    name: str
    owner: str
    state: JobState
    queue: str
    priority: int
    idempotency_key: str | None = None
    attempts: int
    failures: int
    max_attempts: int
    timeout_s: float | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    output_uri: str | None = None
    manifest: dict[str, Any] | None = None
    # The outcome in figures (jobs/api/job_view.py): an ended job's from its summary, else its progress.
    rows_total: int | None = Field(None, description="rows the job's input has, once its run planned them")
    rows: int | None = Field(None, description="rows done, the whole job (shards of earlier runs included)")
    error_rows: int | None = Field(None, description="rows whose output is an error")
    completion_tokens: int | None = None
    eta_s: float | None = Field(None, description="a running job: seconds left at its current rate")
    reasons: list[str] = Field([], description="a partial job: why not every row has an output")
    exit_code: int | None = Field(None, description="an ended job: the exit code of `llmbatch wait` "
                                  "(0 succeeded, 1 failed, 3 partial, 130 cancelled)")

    @classmethod
    def of(cls, row: dict, *, manifest: bool = True) -> "JobOut":
        """The API's view of a store row (without its manifest in listings)."""
        return cls(**{**row, **figures(row), **({} if manifest else {"manifest": None})})


class JobList(BaseModel):
    jobs: list[JobOut]


class ScheduleOut(BaseModel):
    id: str
    name: str
    owner: str
    cron: str
    on_missed: str
    enabled: bool
    next_run_at: datetime
    last_run_at: datetime | None = None
    created_at: datetime


class SubmitResponse(BaseModel):
    created: bool
    job: JobOut | None = None
    schedule: ScheduleOut | None = None


class EventOut(BaseModel):
    seq: int
    at: datetime
    kind: str
    state: JobState | None = None
    message: str | None = None
    data: Any = None


class EventList(BaseModel):
    job_id: str
    state: JobState
    events: list[EventOut]


class FieldErrorOut(BaseModel):
    path: str
    message: str


class ErrorBody(BaseModel):
    message: str
    fields: list[FieldErrorOut] = []


class ErrorResponse(BaseModel):
    error: ErrorBody
