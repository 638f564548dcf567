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
