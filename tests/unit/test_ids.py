"""The id rules over a whole input (workers.inference.ids): one type, no nulls, no repeats, each
found with its file, row and id, or dropped and listed by the manifest's choice."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from workers.inference.ids import check_ids, plan_id_type


def col(values, type=None) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array(values, type)])


def test_unique_ids_pass_and_keep_their_type():
    assert check_ids({"a": col([1, 2]), "b": col([3])}).id_type == "int64"
    check = check_ids({"a": col(["x", "y"]), "b": col(["z"], pa.large_string())})
    assert check.id_type == "string" and not check.problems and not check.dropped


def test_duplicates_within_and_across_files_name_file_row_and_first_row():
    check = check_ids({"a.parquet": col(["a", "a", "b", "b"]), "b.parquet": col(["c", "a"])})
    [problem] = check.problems
    assert problem.startswith("3 row(s) repeat an earlier 'id'")
    assert "a.parquet row 1 id 'a' (first: a.parquet row 0)" in problem
    assert "b.parquet row 1 id 'a' (first: a.parquet row 0)" in problem
    assert "a.parquet row 3 id 'b' (first: a.parquet row 2)" in problem
    assert "on_duplicate_id: drop" in problem


def test_only_five_examples_then_a_count():
    check = check_ids({"f": col([7] * 12)})
    [problem] = check.problems
    assert problem.startswith("11 row(s)") and problem.count(" id 7 ") == 5 and "and 6 more" in problem


def test_null_ids_are_a_problem_naming_rows():
    check = check_ids({"a.parquet": col(["x", None, "y", None])}, id_column="doc_id")
    [problem] = check.problems
    assert "2 row(s) have a null 'doc_id'" in problem and "a.parquet row 1" in problem and "a.parquet row 3" in problem


def test_drop_keeps_the_first_row_of_each_id_and_lists_the_rest():
    check = check_ids({"a.parquet": col(["a", "a", None, "b"]), "b.parquet": col(["b", "c"])}, "drop", "drop")
    assert not check.problems and len(check.warnings) == 2
    assert check.dropped == [
        {"file": "a.parquet", "row": 1, "id": "a", "reason": "duplicate id"},
        {"file": "a.parquet", "row": 2, "id": None, "reason": "null id"},
        {"file": "b.parquet", "row": 0, "id": "b", "reason": "duplicate id"},
    ]
    assert check.skipped_rows() == {"a.parquet": [1, 2], "b.parquet": [0]}


def test_drop_one_rule_still_refuses_the_other():
    check = check_ids({"a": col(["a", "a", None])}, on_duplicate="drop", on_null="error")
    assert len(check.problems) == 1 and "null" in check.problems[0]
    assert [d["row"] for d in check.dropped] == [1]


def test_integer_and_string_files_are_read_as_strings():
    check = check_ids({"ints.parquet": col([1, 2]), "strs.parquet": col(["x", "y"])})
    assert check.id_type == "string" and not check.problems


def test_integer_and_string_ids_that_collide_once_cast_are_refused_even_with_drop():
    for mode in ("error", "drop"):
        check = check_ids({"ints.parquet": col([1, 2]), "strs.parquet": col(["1", "y"])}, on_duplicate=mode)
        assert any("equal only once integers are read as strings" in p and "strs.parquet row 0 id '1'" in p
                   for p in check.problems), check.problems


def test_integer_widths_mix_as_int64():
    assert check_ids({"a": col([1], pa.int32()), "b": col([2], pa.int64())}).id_type == "int64"


def test_other_type_mixes_name_the_files_and_types():
    check = check_ids({"a.parquet": col([1]), "b.parquet": col([1.5])})
    assert check.id_type is None
    [problem] = check.problems
    assert "a.parquet: int64" in problem and "b.parquet: double" in problem


def test_an_all_null_file_follows_the_others_and_its_nulls_are_reported():
    typed, why = plan_id_type({"a": pa.int64(), "b": pa.null()})
    assert typed == pa.int64() and why is None
    check = check_ids({"a": col([1, 2]), "b": col([None, None], pa.null())})
    assert check.id_type == "int64" and "2 row(s) have a null" in check.problems[0]


@pytest.mark.parametrize("n", [2_000_000])
def test_millions_of_ids_are_checked_in_seconds(n):
    started = time.perf_counter()
    check = check_ids({"a": pa.chunked_array([pa.array(np.arange(n))]),
                       "b": pa.chunked_array([pa.array(np.arange(n - 1, 2 * n))])})
    assert time.perf_counter() - started < 20
    assert check.problems and check.problems[0].startswith("1 row(s)") and "b row 0 id 1999999" in check.problems[0]
