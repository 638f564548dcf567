"""The id rules over a whole input: one id type for every file, no null ids, no repeated ids.

Checked before any work, reading only the id column of each file, with pyarrow compute (no
Python loop over rows): a job of millions of rows is checked in seconds. Ids of different
files may differ in type only as integers and strings, which the plan reads as strings (1 and
"1" are then the same id). A duplicate or null id refuses the job, or, by the manifest's
choice (`input.on_duplicate_id` / `input.on_null_id: drop`), leaves those rows out: a repeated
id keeps its first row (in file order, then row order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SHOWN = 5  # examples a message names before it gives the count


@dataclass
class IdCheck:
    """What the id rules found. `dropped`: {"file", "row", "id", "reason"} rows to leave out."""

    id_type: str | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    def skipped_rows(self) -> dict[str, list[int]]:
        """file URI -> row indexes to leave out (for workers.inference.shards.with_skipped_rows)."""
        out: dict[str, list[int]] = {}
        for row in self.dropped:
            out.setdefault(row["file"], []).append(row["row"])
        return out


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def plan_id_type(types: dict[str, pa.DataType]) -> tuple[pa.DataType | None, str | None]:
    """The one type every file's ids are read as, or (None, why not). `types`: file -> type.

    Files whose id column is all null (type null) follow the others; the null ids are reported
    by the null rule."""
    kinds = {f: t for f, t in types.items() if not pa.types.is_null(t)}
    distinct = set(kinds.values())
    if not distinct:
        return pa.string(), None
    if len(distinct) == 1:
        return distinct.pop(), None
    if all(_is_int(t) for t in distinct):
        return pa.int64(), None
    if all(_is_int(t) or _is_str(t) for t in distinct):
        return pa.string(), None  # integer and string ids: the plan reads every id as a string
    listed = "; ".join(f"{f}: {t}" for f, t in kinds.items())
    return None, (f"id columns of different types that cannot be read as one "
                  f"(integers and strings mix as strings; others must match): {listed}")


def check_ids(columns: dict[str, pa.ChunkedArray], on_duplicate: str = "error", on_null: str = "error",
              id_column: str = "id") -> IdCheck:
    """The id rules over every file's id column (`columns`: file URI -> its ids, in file order)."""
    files = list(columns)
    plan_type, why = plan_id_type({f: c.type for f, c in columns.items()})
    if plan_type is None:
        return IdCheck(None, problems=[why])
    check = IdCheck(str(plan_type))
    ids, file_index, rows, cast_problems = _stacked(columns, plan_type)
    if cast_problems:
        check.problems += cast_problems
        return check
    nulls = pc.is_null(ids)
    _apply_nulls(check, files, file_index, rows, nulls, on_null, id_column)
    valid = pc.invert(nulls)
    _apply_duplicates(check, files, columns, ids.filter(valid), file_index.filter(valid), rows.filter(valid),
                      on_duplicate, id_column)
    position = {f: i for i, f in enumerate(files)}
    check.dropped.sort(key=lambda d: (position[d["file"]], d["row"]))
    return check


def _stacked(columns: dict[str, pa.ChunkedArray], plan_type: pa.DataType):
    """All ids cast to the plan's type in one array, with each id's file number and row index."""
    arrays, files, rows, problems = [], [], [], []
    for i, (file, column) in enumerate(columns.items()):
        try:
            arrays.append(pc.cast(column, plan_type).combine_chunks())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            problems.append(f"{file}: ids of type {column.type} cannot be read as {plan_type} ({exc})")
            continue
        files.append(np.full(len(column), i, dtype=np.int32))
        rows.append(np.arange(len(column), dtype=np.int64))
    if problems:
        return None, None, None, problems
    ids = pa.concat_arrays(arrays) if arrays else pa.array([], plan_type)
    file_index = pa.array(np.concatenate(files) if files else np.zeros(0, np.int32))
    row_index = pa.array(np.concatenate(rows) if rows else np.zeros(0, np.int64))
    return ids, file_index, row_index, []


def _where(files: list[str], file_index: pa.Array, rows: pa.Array, ids: pa.Array | None, picks: pa.Array,
           limit: int | None = SHOWN) -> list[tuple[str, int, object]]:
    """(file, row, id) of the rows at `picks` (the first `limit` of them)."""
    picks = picks if limit is None else picks[:limit]
    f = pc.take(file_index, picks).to_numpy()
    r = pc.take(rows, picks).to_numpy()
    v = pc.take(ids, picks).to_pylist() if ids is not None else [None] * len(picks)
    return [(files[int(a)], int(b), c) for a, b, c in zip(f, r, v)]


def _examples(found: list[tuple[str, int, object]], total: int) -> str:
    shown = ", ".join(f"{file} row {row}" + ("" if value is None else f" id {value!r}")
                      for file, row, value in found)
    more = f" and {total - len(found)} more" if total > len(found) else ""
    return f"{shown}{more}"


def _apply_nulls(check: IdCheck, files, file_index, rows, nulls, on_null: str, id_column: str) -> None:
    picks = pc.indices_nonzero(nulls)
    total = len(picks)
    if not total:
        return
    if on_null == "drop":
        for file, row, _ in _where(files, file_index, rows, None, picks, None):
            check.dropped.append({"file": file, "row": row, "id": None, "reason": "null id"})
        check.warnings.append(f"{total} row(s) with a null {id_column!r} left out (input.on_null_id: drop): "
                              + _examples(_where(files, file_index, rows, None, picks), total))
        return
    check.problems.append(f"{total} row(s) have a null {id_column!r}: "
                          + _examples(_where(files, file_index, rows, None, picks), total)
                          + " (give each row an id, or set input.on_null_id: drop)")


def _apply_duplicates(check: IdCheck, files, columns, ids, file_index, rows, on_duplicate: str,
                      id_column: str) -> None:
    """Sort by id: a row equal to the one before it repeats an earlier id."""
    if len(ids) < 2:
        return
    try:
        # stable: equal ids stay in (file, row) order, so the first of each run is the kept row
        order = pc.sort_indices(ids)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        check.problems.append(f"ids of type {ids.type} cannot be compared: use integer or string ids")
        return
    ids, file_index, rows = (pc.take(a, order) for a in (ids, file_index, rows))
    repeats = pc.equal(ids[1:], ids[:-1])
    picks = pc.add(pc.indices_nonzero(repeats), 1)
    total = len(picks)
    if not total:
        return
    firsts = np.flatnonzero(np.concatenate([[True], ~repeats.to_numpy(zero_copy_only=False)]))

    def examples(at: pa.Array) -> str:
        # each example also says where its id first appeared (the row that is kept)
        found = _where(files, file_index, rows, ids, at)
        first_at = firsts[np.searchsorted(firsts, at[:SHOWN].to_numpy(), side="right") - 1]
        kept = _where(files, file_index, rows, None, pa.array(first_at, pa.int64()))
        return ", ".join(f"{file} row {row} id {value!r} (first: {kf} row {kr})"
                         for (file, row, value), (kf, kr, _) in zip(found, kept)) \
            + (f" and {len(at) - len(found)} more" if len(at) > len(found) else "")
    # Ids equal only once read as one type (1 and "1"): no choice of row is right; refuse.
    kinds = pa.array([_is_str(columns[f].type) for f in files])
    kind = pc.take(kinds, file_index)
    crossed = pc.and_(repeats, pc.not_equal(kind[1:], kind[:-1]))
    cross_picks = pc.add(pc.indices_nonzero(crossed), 1)
    if len(cross_picks):
        check.problems.append(f"{len(cross_picks)} id(s) are equal only once integers are read as strings: "
                              + examples(cross_picks)
                              + " (ids must be unique across every input file)")
    if on_duplicate == "drop":
        for file, row, value in _where(files, file_index, rows, ids, picks, None):
            check.dropped.append({"file": file, "row": row, "id": value, "reason": "duplicate id"})
        check.warnings.append(f"{total} row(s) repeat an earlier {id_column!r} and are left out "
                              f"(input.on_duplicate_id: drop; the first row of each id is kept): "
                              + examples(picks))
        return
    if len(cross_picks) == total:
        return  # every repeat is a cross-type one, already reported
    check.problems.append(f"{total} row(s) repeat an earlier {id_column!r}: "
                          + examples(picks)
                          + " (ids must be unique across every input file; or set input.on_duplicate_id: drop)")
