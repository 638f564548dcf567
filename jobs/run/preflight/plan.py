"""What the pre-flight found: the plan of a job (files, shards, rows, ids, model, tokens) and
every problem that refuses it, every warning that does not."""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.storage import FileRef
from llm_core.fewshot import FewShotSpec
from workers.inference.shards import Shard


class PreflightError(ValueError):
    """The job is refused before any work: every problem the pre-flight found, one per line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        listed = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"pre-flight refused the job ({len(self.problems)} problem(s)):\n{listed}")

    def __reduce__(self):  # crosses Ray boundaries: rebuilt from the same arguments
        return type(self), (self.problems,)


@dataclass
class Plan:
    files: list[FileRef] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)
    rows: int = 0  # rows the job will process: the input's rows less the dropped ones
    id_type: str = ""  # pyarrow type string every part's id column has ("string", "int64")
    dropped: list[dict] = field(default_factory=list)  # {"file", "row", "id", "reason"}
    model: dict = field(default_factory=dict)  # workers.model_identity.model_identity(...)
    adapter: dict | None = None  # workers.adapter_folder.adapter_identity(...) when the job names one
    examples: FewShotSpec | None = None  # task.examples (llm_core.fewshot); a file's loaded once by the pre-flight
    dtype: str = ""  # the actors' params.dtype, `auto` decided (jobs.run.precision); set by the run
    est_prompt_tokens: int = 0
    est_completion_tokens: int = 0
    problems: list[str] = field(default_factory=list)  # fatal: the job is refused with all of them
    warnings: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what was checked, in words (the report says it)

    @property
    def ok(self) -> bool:
        return not self.problems

    def require_ok(self) -> None:
        if self.problems:
            raise PreflightError(self.problems)

    def file_rows(self) -> dict[str, int]:
        """Rows of each input file (its shards' ranges, dropped rows included)."""
        rows: dict[str, int] = {f.uri: 0 for f in self.files}
        for s in self.shards:
            rows[s.file_uri] = rows.get(s.file_uri, 0) + (s.row_end - s.row_start)
        return rows
