"""The rows of one output part: what the actor writes, one schema for every part of a run.

Columns: the input id (cast to the plan's `id_type`), the task's output column, `error`,
`error_kind` ("permanent" / "retriable" / null), `attempts` (1 on the first run, +1 per retry),
`finish_reason`, token counts, `latency_s`, `finished_at`.

With params.n > 1 (several completions per row) the output column, `finish_reason` and
`completion_tokens` are lists of n, completion by completion; an error row has no output (null),
and null lists where nothing was generated.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from llm_core.llm import RowResult
from workers.inference.shard_task import PERMANENT, RETRIABLE, ShardWork

# Row errors that come from the input itself, by the start of their message (llm_core's wording):
# used when an engine does not say the kind (the baseline and classifier-head runners).
_INPUT_PROBLEMS = ("text is null", "text is empty", "input too long", "target language", "text is not")


def error_kind(result: RowResult) -> str | None:
    """The row's error kind: the engine's own when it gives one, else from the message."""
    if result.error is None:
        return None
    kind = getattr(result, "error_kind", None)
    if kind:
        return kind
    return PERMANENT if result.error.startswith(_INPUT_PROBLEMS) else RETRIABLE


def cast_ids(ids: pa.ChunkedArray | pa.Array, id_type: str | None, where: str) -> pa.ChunkedArray | pa.Array:
    """The id column in the plan's type, so every part shares one schema (a clear error if not)."""
    if not id_type:
        return ids
    target = pa.type_for_alias(id_type)
    if ids.type == target:
        return ids
    try:
        return pc.cast(ids, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{where}: id column of type {ids.type} cannot be cast to the plan's {id_type}: {exc}") from None


def _per_completion(results: list[RowResult], several: bool) -> dict[str, pa.Array]:
    """The output, finish_reason and completion_tokens columns: one value per row, or with
    several completions per row a list per row (null for an error row's output)."""
    if not several:
        return {"output": pa.array([r.output for r in results], pa.string()),
                "finish_reason": pa.array([r.finish_reason for r in results], pa.string()),
                "completion_tokens": pa.array([r.completion_tokens for r in results], pa.int32())}
    samples = [r.samples for r in results]
    return {
        "output": pa.array([[s.text for s in ss] if ss and r.error is None else None
                            for r, ss in zip(results, samples)], pa.list_(pa.string())),
        "finish_reason": pa.array([[s.finish_reason for s in ss] if ss else None for ss in samples],
                                  pa.list_(pa.string())),
        "completion_tokens": pa.array([[s.completion_tokens for s in ss] if ss else None for ss in samples],
                                      pa.list_(pa.int32())),
    }


def output_table(work: ShardWork, ids, results: list[RowResult], latency_s: float,
                 attempts: list[int] | None = None) -> pa.Table:
    n = len(results)
    columns = _per_completion(results, work.sampling.n > 1)
    return pa.table({
        work.id_column: ids,
        work.task.output_column: columns["output"],
        "error": pa.array([r.error for r in results], pa.string()),
        "error_kind": pa.array([error_kind(r) for r in results], pa.string()),
        "attempts": pa.array(attempts if attempts is not None else [1] * n, pa.int32()),
        "finish_reason": columns["finish_reason"],
        "prompt_tokens": pa.array([r.prompt_tokens for r in results], pa.int32()),
        "completion_tokens": columns["completion_tokens"],
        # The batch's generation time per row: the report draws latency and throughput from it.
        "latency_s": pa.array([latency_s] * n, pa.float32()),
        "finished_at": pa.array([time.time()] * n, pa.float64()),
    })


def rows_to_retry(base: pa.Table, kinds: tuple[str, ...]) -> list[int]:
    """Positions of the base part's error rows whose kind is among `kinds`."""
    errors = base.column("error").to_pylist()
    found = base.column("error_kind").to_pylist() if "error_kind" in base.schema.names else [RETRIABLE] * len(errors)
    return [i for i, (e, k) in enumerate(zip(errors, found)) if e is not None and (k or RETRIABLE) in kinds]


def merge_retried(base: pa.Table, positions: list[int], redone: pa.Table) -> pa.Table:
    """The base part with the rows at `positions` replaced by `redone`'s rows (same order), whole."""
    redone = redone.select(base.schema.names).cast(base.schema)
    take = list(range(base.num_rows))
    # Indices into concat(base, redone): a retried row comes from the redone table.
    for j, i in enumerate(positions):
        take[i] = base.num_rows + j
    both = pa.concat_tables([base.replace_schema_metadata(None), redone.replace_schema_metadata(None)])
    return both.take(pa.array(take, pa.int64()))
