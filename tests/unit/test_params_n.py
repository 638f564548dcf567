"""params.n (several completions per row): the manifest's checks, the fingerprint, the per-row
seeds, and the output columns (lists of n) as the writer, the counts, the metrics and the report
read them."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.evaluation.scoring import _predictions
from jobs.manifest import ManifestError, parse_manifest
from jobs.run.inference import fingerprint_of
from jobs.run.preflight import preflight
from jobs.run.work import build_work, sampling_params
from llm_core.engine.sampling import row_seed
from llm_core.llm import RETRIABLE, RowResult, Sample
from llm_core.report import ReportColumns, render_report
from workers.inference.part_table import merge_retried, output_table
from workers.output.fingerprint import fingerprint_diff, run_fingerprint
from workers.output.parquet_io import column_total
from tests.unit.test_preflight import empty_model_cache, manifest as preflight_manifest, texts, word_model, write  # noqa: F401

BASE = {"name": "n", "task": "summarize", "input": {"uri": "data/x.parquet"}, "output": {"uri": "out/x"}}


def manifest(params: dict | None = None, **extra):
    return parse_manifest({**BASE, **({"params": params} if params is not None else {}), **extra})


def errors_of(data: dict) -> dict[str, str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return {e.path: e.message for e in info.value.errors}


def test_n_defaults_to_one_and_reaches_the_sampling():
    assert manifest().params.n == 1 and sampling_params(manifest()).n == 1
    m = manifest({"n": 3, "temperature": 0.8, "seed": 5})
    assert sampling_params(m).n == 3 and sampling_params(m).seed == 5
    assert build_work(m, "job").sampling.n == 3


@pytest.mark.parametrize("n", [0, -1, 17])
def test_n_out_of_range_is_refused(n):
    errors = errors_of({**BASE, "params": {"n": n, "temperature": 0.8}})
    assert list(errors) == ["params.n"]


def test_greedy_n_is_refused_naming_n_and_temperature():
    errors = errors_of({**BASE, "params": {"n": 2}})
    assert list(errors) == ["params.n"]
    assert "params.temperature" in errors["params.n"] and "identical" in errors["params.n"]


def test_classify_n_is_refused():
    errors = errors_of({**BASE, "task": {"kind": "classify", "labels": ["a", "b"]},
                        "params": {"n": 2, "temperature": 0.7}})
    assert list(errors) == ["params.n"] and "classify" in errors["params.n"]


def test_baseline_engine_n_is_refused():
    errors = errors_of({**BASE, "engine": "baseline", "params": {"n": 4, "temperature": 1.0}})
    assert list(errors) == ["params.n"] and "engine: baseline" in errors["params.n"]


def test_sampled_n_is_accepted_on_the_model_engines():
    for engine in ("auto", "native", "hf"):
        assert manifest({"n": 16, "temperature": 0.7}, engine=engine).params.n == 16


def _fp(params: dict) -> dict:
    return run_fingerprint(files=[], model={"kind": "x"}, engine="auto", task={"kind": "summarize"},
                           params=params, columns={"id": "id"}, id_type="string")


def test_the_fingerprint_has_n_only_when_it_is_not_one():
    one = manifest({"temperature": 0.8}).params.model_dump(mode="json")
    assert one["n"] == 1
    before = {k: v for k, v in one.items() if k != "n"}  # the params' dump before n existed
    assert _fp(one) == _fp(before)  # runs of jobs that do not use n keep their fingerprints
    three = manifest({"temperature": 0.8, "n": 3}).params.model_dump(mode="json")
    assert _fp(three) != _fp(one)
    assert fingerprint_diff(_fp(one), _fp(three)) == ["params.n: added (3)"]


def test_fingerprint_of_a_job_carries_n():
    class Plan:  # what fingerprint_of reads of a pre-flight plan
        files, model, examples, id_type, adapter, dtype = [], {"kind": "builtin"}, None, "string", None, ""

    one = fingerprint_of(manifest({"temperature": 0.8}), Plan())
    two = fingerprint_of(manifest({"temperature": 0.8, "n": 2}), Plan())
    assert "n" not in one["params"] and two["params"]["n"] == 2


def test_row_seeds_depend_on_the_seed_and_the_id_only():
    assert row_seed(0, "pkg-1") == row_seed(0, "pkg-1")
    seeds = {row_seed(0, "pkg-1"), row_seed(0, "pkg-2"), row_seed(1, "pkg-1"), row_seed(0, 1), row_seed(0, "1")}
    assert len(seeds) == 5
    assert all(0 <= s < 2**60 for s in seeds)  # + completion index stays a valid torch seed


def _results() -> list[RowResult]:
    ok = RowResult("a", None, "stop", 10, 7, samples=[Sample("a", "stop", 3), Sample("b", "length", 4)])
    empty = RowResult(None, "model produced an empty output (completion 2 of 2)", "stop", 11, 5, RETRIABLE,
                      samples=[Sample("c", "stop", 5), Sample("", "stop", 0)])
    refused = RowResult(None, "text is null")
    return [ok, empty, refused]


def test_output_columns_are_lists_of_n_and_error_rows_have_no_output():
    work = build_work(manifest({"n": 2, "temperature": 0.8}), "job")
    table = output_table(work, pa.array(["r1", "r2", "r3"]), _results(), 0.5)
    assert table.schema.field("summary").type == pa.list_(pa.string())
    assert table.schema.field("finish_reason").type == pa.list_(pa.string())
    assert table.schema.field("completion_tokens").type == pa.list_(pa.int32())
    rows = table.to_pylist()
    assert rows[0]["summary"] == ["a", "b"] and rows[0]["finish_reason"] == ["stop", "length"]
    assert rows[0]["completion_tokens"] == [3, 4] and rows[0]["error"] is None
    assert rows[1]["summary"] is None and rows[1]["error_kind"] == RETRIABLE  # no partial list
    assert rows[1]["completion_tokens"] == [5, 0]  # what was generated still counts
    assert rows[2]["summary"] is None and rows[2]["finish_reason"] is None and rows[2]["completion_tokens"] is None
    assert rows[2]["error_kind"] == "permanent"
    assert column_total(table.column("completion_tokens")) == 12
    # a retry's redone rows merge into the base part with the same list schema
    redone = output_table(work, pa.array(["r2"]), [_results()[0]], 0.1, attempts=[2])
    merged = merge_retried(table, [1], redone)
    assert merged.schema == table.schema and merged.column("summary").to_pylist()[1] == ["a", "b"]


def test_one_completion_keeps_todays_columns():
    work = build_work(manifest(), "job")
    table = output_table(work, pa.array(["r1"]), [RowResult("a", None, "stop", 10, 7)], 0.5)
    assert table.schema.field("summary").type == pa.string()
    assert table.schema.field("finish_reason").type == pa.string()
    assert table.schema.field("completion_tokens").type == pa.int32()
    assert column_total(table.column("completion_tokens")) == 7


def test_metrics_score_the_first_completion():
    column = pa.chunked_array([pa.array([["x", "y"], None, ["z"]], pa.list_(pa.string()))])
    assert _predictions(column) == ["x", None, "z"]
    assert _predictions(pa.chunked_array([pa.array(["x", None])])) == ["x", None]


def test_the_report_reads_list_columns():
    work = build_work(manifest({"n": 2, "temperature": 0.8}), "job")
    table = output_table(work, pa.array(["r1", "r2", "r3"]), _results(), 0.5)
    page = render_report(table, None, None, inputs=["t1", "t2", "t3"], columns=ReportColumns(output="summary"))
    assert "[1] a\n[2] b" in page and "[1] stop\n[2] length" in page
    assert "<td>12</td>" in page  # completion tokens: every completion counted



def test_the_preflight_estimate_counts_every_completion(tmp_path):
    write(tmp_path / "in" / "a.parquet", id=["a", "b", "c"], text=texts(3))
    model = word_model(tmp_path / "model")
    one = preflight(preflight_manifest(tmp_path, model))
    three = preflight(preflight_manifest(tmp_path, model, params={"n": 3, "temperature": 0.7}))
    assert one.ok and three.ok, (one.problems, three.problems)
    assert one.est_completion_tokens == 16 * 3 and three.est_completion_tokens == 16 * 3 * 3
