"""Shard planning: row-group shards with stable ids, schema checks naming the file."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.inference.shards import InputSchemaError, plan_shards, read_shard

REQ = {"id": "id", "text": "text"}


def test_example_data_plans_eight_stable_shards(example_data):
    a = plan_shards(str(example_data), REQ)
    b = plan_shards(str(example_data), REQ)
    assert len(a) == 8 and [s.shard_id for s in a] == [s.shard_id for s in b]
    assert len({s.shard_id for s in a}) == 8
    assert sum(s.num_rows for s in a) == 200
    assert [s.row_start for s in a] == list(range(0, 200, 25))


def test_ids_depend_on_file_and_range_not_on_mtime(tmp_path, example_data):
    copy = tmp_path / "copy.parquet"
    shutil.copy(example_data, copy)
    before = [s.shard_id for s in plan_shards(str(copy), REQ)]
    copy.touch()
    assert [s.shard_id for s in plan_shards(str(copy), REQ)] == before
    assert before != [s.shard_id for s in plan_shards(str(example_data), REQ)]  # another path


def test_rows_per_shard_splits_row_groups_and_reads_exact_rows(example_data):
    shards = plan_shards(str(example_data), REQ, rows_per_shard=10)
    assert len(shards) == 24  # 8 row groups of 25 -> 10 + 10 + 5 each
    ids = []
    for s in shards:
        t = read_shard(s, ["id", "text"])
        assert t.num_rows == s.num_rows
        ids += t.column("id").to_pylist()
    assert ids == pq.read_table(example_data).column("id").to_pylist()


def _write(path, table, row_group_size=None):
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_folder_glob_and_list_inputs(tmp_path):
    for i in range(3):
        _write(tmp_path / f"f{i}.parquet", pa.table({"id": [f"{i}-a", f"{i}-b"], "text": ["x", "y"]}))
    (tmp_path / "_SUCCESS.json").write_text("{}")  # bookkeeping files are not inputs
    assert len(plan_shards(str(tmp_path), REQ)) == 3
    assert len(plan_shards(str(tmp_path / "f[01].parquet"), REQ)) == 2
    assert len(plan_shards([str(tmp_path / "f0.parquet"), str(tmp_path / "f2.parquet")], REQ)) == 2


def test_missing_text_column_names_the_file(tmp_path):
    p = _write(tmp_path / "bad.parquet", pa.table({"id": ["a"], "body": ["x"]}))
    with pytest.raises(InputSchemaError, match=r"bad\.parquet.*text column 'text' is missing"):
        plan_shards(str(p), REQ)


def test_non_string_text_column_is_refused(tmp_path):
    p = _write(tmp_path / "ints.parquet", pa.table({"id": ["a"], "text": [3]}))
    with pytest.raises(InputSchemaError, match=r"ints\.parquet.*expected string"):
        plan_shards(str(p), REQ)


def test_missing_input_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .parquet files"):
        plan_shards(str(tmp_path / "nothing-here"), REQ)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(InputSchemaError, match="junk.parquet"):
        plan_shards(str(junk), REQ)


def test_skipped_rows_are_left_out_of_their_shard_and_ids_do_not_change(example_data):
    from workers.inference.shards import with_skipped_rows

    shards = plan_shards(str(example_data), REQ, rows_per_shard=10)
    uri = shards[0].file_uri
    skipped = with_skipped_rows(shards, {uri: [0, 9, 10, 199]})
    assert [s.shard_id for s in skipped] == [s.shard_id for s in shards]
    assert skipped[0].skip_rows == (0, 9) and skipped[1].skip_rows == (10,) and skipped[-1].skip_rows == (199,)
    assert sum(s.num_rows for s in skipped) == 196
    all_ids = pq.read_table(example_data).column("id").to_pylist()
    read = [i for s in skipped for i in read_shard(s, ["id"]).column("id").to_pylist()]
    assert read == [i for n, i in enumerate(all_ids) if n not in (0, 9, 10, 199)]
    assert read_shard(skipped[0], ["id"]).num_rows == skipped[0].num_rows == 8


def test_a_skipped_row_outside_every_shard_is_an_error(example_data):
    from workers.inference.shards import with_skipped_rows

    shards = plan_shards(str(example_data), REQ)
    with pytest.raises(ValueError, match="row 200 is in no shard"):
        with_skipped_rows(shards, {shards[0].file_uri: [200]})
