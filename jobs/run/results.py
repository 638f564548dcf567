"""What a running job reports (JobProgress) and how it ended (JobResult), for every kind of job.

Both cross the Ray boundary as plain JSON data (`to_dict`): the job runner actor hands them to
the scheduler, which stores them; `JobResult.from_dict` rebuilds a result on the service side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from jobs.lifecycle import JobState

# The training fields of JobProgress: left out of an inference job's progress.
TRAINING_FIELDS = ("event", "step", "total_steps", "values")


@dataclass
class JobProgress:
    """The progress of one run. Inference counts shards and rows; training reports the latest
    event of rank 0 (`event`: step, eval, resumed, cancelled, done) and the values events carried
    so far (loss, lr, tokens_per_s, mfu, eval_*...)."""

    shards_total: int = 0
    shards_done: int = 0  # committed by this run
    shards_failed: int = 0
    shards_skipped: int = 0  # already committed by an earlier run (resume)
    rows: int = 0
    error_rows: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    phase: str = "starting"  # starting, loading_model, running, finalizing, evaluating, done
    event: str | None = None
    step: int | None = None
    total_steps: int | None = None
    values: dict = field(default_factory=dict)

    @property
    def training(self) -> bool:
        return self.event is not None

    @property
    def tokens_per_s(self) -> float:
        if self.training:  # the training throughput rank 0 measured
            return float(self.values.get("tokens_per_s") or 0.0)
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def record(self, event: dict) -> None:
        """Take in one training event (values persist until an event brings new ones)."""
        self.event = event.get("event", self.event)
        self.step = event.get("step", self.step)
        self.total_steps = event.get("total_steps", self.total_steps)
        skip = {"event", "step", "total_steps", "final_eval"}
        self.values.update({k: v for k, v in event.items() if k not in skip})

    def to_dict(self) -> dict:
        data = asdict(self)
        values = data.pop("values")
        if not self.training:
            for name in TRAINING_FIELDS[:-1]:
                data.pop(name)
        return {**values, **data, "tokens_per_s": round(self.tokens_per_s, 2)}

    @classmethod
    def from_dict(cls, data: dict) -> "JobProgress":
        """The inverse of `to_dict` (what the API serves): unknown keys are training values."""
        names = {f.name for f in fields(cls)} - {"values"}
        values = {k: v for k, v in data.items() if k not in names and k != "tokens_per_s"}
        if data.get("event") is not None and "tokens_per_s" in data:
            values["tokens_per_s"] = data["tokens_per_s"]
        return cls(**{k: v for k, v in data.items() if k in names}, values=values)


@dataclass
class JobResult:
    status: JobState  # succeeded, failed or cancelled
    output_uri: str | None
    error: str | None = None
    summary: dict = field(default_factory=dict)

    def __post_init__(self):
        self.status = JobState(self.status)  # refuses a state that does not exist

    @property
    def ok(self) -> bool:
        return self.status is JobState.SUCCEEDED

    def to_dict(self) -> dict:
        """The wire shape the scheduler reads: the status as the state's string value."""
        return {"status": self.status.value, "error": self.error, "summary": self.summary,
                "output_uri": self.output_uri}

    @classmethod
    def from_dict(cls, data: dict) -> "JobResult":
        return cls(JobState(data["status"]), data.get("output_uri"), data.get("error"), data.get("summary") or {})
