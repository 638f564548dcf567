"""What a running job reports (JobProgress) and how it ended (JobResult)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class JobProgress:
    shards_total: int = 0
    shards_done: int = 0  # committed by this run
    shards_failed: int = 0
    shards_skipped: int = 0  # already committed by an earlier run (resume)
    rows: int = 0
    error_rows: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    phase: str = "starting"  # starting, loading_model, running, finalizing, evaluating, done

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2)}


@dataclass
class JobResult:
    status: str  # succeeded | failed | cancelled
    output_uri: str
    error: str | None = None
    summary: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"
