"""What one inference job asks of every shard, and what a shard reports back.

Plain data, so it travels to Ray actors and back, and so the engine can run the same work
without Ray (benchmarks compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.storage.scope import Scope
from llm_core.engine.sampling import SamplingParams
from llm_core.tasks import TaskSpec
from workers.output.location import OutputLocation

# Error kinds of an output row: an input problem (null or empty text, too long, a bad target
# language) fails again on any rerun; a model or engine problem may not.
PERMANENT = "permanent"
RETRIABLE = "retriable"
ERROR_KINDS = (PERMANENT, RETRIABLE)


@dataclass(frozen=True)
class ShardWork:
    job_id: str
    output: OutputLocation
    task: TaskSpec
    sampling: SamplingParams
    id_column: str
    text_column: str
    language_column: str | None = None
    max_input_tokens: int | None = None
    on_long_input: str = "truncate"
    # The run's folder: parts commit as data/<run_id>/part-<shard_id>.parquet.
    run_id: str = ""
    # The plan's id type (a pyarrow type name): every part's id column is cast to it.
    id_type: str | None = None
    # A retry_errors run: each shard here has a base part (its path relative to the output) whose
    # error rows of these kinds are redone; the rest of the base part is kept as it is.
    retry_kinds: tuple[str, ...] = ()
    base_parts: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def output_uri(self) -> str:
        return self.output.uri

    @property
    def scope(self) -> Scope | None:
        """The job's scope (the output location carries it), for the shard's input reads too."""
        return self.output.scope

    @property
    def input_columns(self) -> list[str]:
        cols = [self.id_column, self.text_column]
        if self.language_column and self.language_column not in cols:
            cols.append(self.language_column)
        return cols

    def base_part(self, shard_id: str) -> str | None:
        """The part this shard's retry starts from (None: not a retry of this shard)."""
        return self.base_parts.get(shard_id) if self.retry_kinds else None


@dataclass
class ShardReport:
    shard_id: str
    committed: bool  # this attempt's put created the part
    already_committed: bool = False  # another attempt (or an earlier run) had committed it
    rows: int = 0
    error_rows: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    read_s: float = 0.0
    generate_s: float = 0.0
    write_s: float = 0.0
    actor: str = ""
    node: str = ""
    errors_sample: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the attempt's wall time as the pool saw it
    retried_rows: int | None = None  # a retry_errors shard: the error rows it redid (None: not a retry)
