"""Evaluation and the report read the published snapshot: exactly its files, lined up with the
input by the shard plan (rows left out included), never a run in progress beside it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.evaluation.report import build_report
from jobs.evaluation.scoring import evaluate_output, read_output_with_input
from llm_core.tasks import TaskKind
from workers.output.location import OutputLocation
from workers.output.snapshot import publish_snapshot

FP = {"input": [], "engine": "baseline", "task": {"kind": "summarize"}}


@pytest.fixture
def job(tmp_path):
    """Input ids 0..5 (int64) with a reference; shard aa = rows 0-3 with row 1 dropped, bb = rows 3-6."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array(range(6), pa.int64()), "text": [f"text {i}" for i in range(6)],
                             "reference": [f"the sentence {i}" for i in range(6)]}), source)
    out = OutputLocation.at(str(tmp_path / "out"))
    run = out.prepare("resume", FP).run_id
    shards = [{"shard_id": "aa", "file": str(source), "rows": [0, 3], "skip_rows": [1]},
              {"shard_id": "bb", "file": str(source), "rows": [3, 6]}]
    out.write_manifest({"run_id": run, "fingerprint": FP, "shards": shards,
                        "manifest": {"name": "nightly", "input": {"id_column": "id", "text_column": "text"},
                                     "task": {"kind": "summarize"}}})

    def part(ids, summaries):
        return pa.table({"id": pa.array(ids, pa.string()), "summary": summaries,
                         "error": pa.array([None] * len(ids), pa.string())})

    out.commit_part(run, "aa", part(["0", "2"], ["the sentence 0", "the sentence 2"]))
    out.commit_part(run, "bb", part(["3", "4", "5"], ["the sentence 3", "other words", "the sentence 5"]))
    return out, run


def _publish(out, run, shards):
    return publish_snapshot(out, status="succeeded", job_id="j", run_id=run, fingerprint=FP,
                            files={s: out.part_path(run, s) for s in shards}, id_column="id", id_type="string",
                            summary={"wall_s": 2.0}, reasons=[])


def test_evaluation_scores_exactly_the_snapshot(job):
    out, run = job
    with pytest.raises(FileNotFoundError, match="no published snapshot"):
        evaluate_output(out, task=TaskKind.SUMMARIZE, reference_column="reference", write=False)
    files = {"aa": out.part_path(run, "aa"), "bb": out.part_path(run, "bb")}
    before = evaluate_output(out, task=TaskKind.SUMMARIZE, reference_column="reference", write=False, files=files)
    assert before["rows"] == 5  # a runner scores the files it is about to publish
    _publish(out, run, ["bb"])
    rows = read_output_with_input(out, ["summary"], ["reference"])
    assert rows.column("id").to_pylist() == ["3", "4", "5"]  # only the listed part
    metrics = evaluate_output(out, task=TaskKind.SUMMARIZE, reference_column="reference")
    assert metrics["rows"] == 3 and out.read_metrics() == metrics


def test_rows_left_out_by_the_plan_line_up(job):
    out, run = job
    _publish(out, run, ["aa", "bb"])
    rows = read_output_with_input(out, ["summary"], ["reference"])
    assert rows.column("id").to_pylist() == ["0", "2", "3", "4", "5"]
    assert rows.column("input.reference").to_pylist()[:2] == ["the sentence 0", "the sentence 2"]


def test_references_joined_by_id_read_the_snapshot(job, tmp_path):
    out, run = job
    _publish(out, run, ["aa", "bb"])
    refs = tmp_path / "refs.parquet"
    pq.write_table(pa.table({"id": ["0", "2", "3", "4", "5", "9"], "gold": ["the sentence 0"] * 6}), refs)
    metrics = evaluate_output(out, task=TaskKind.SUMMARIZE, reference_column="gold", references_uri=str(refs),
                              write=False)
    assert metrics["rows"] == 5 and metrics["evaluation"]["references_without_output"] == 1


def test_a_run_in_progress_beside_the_snapshot_is_not_read(job):
    out, run = job
    _publish(out, run, ["aa", "bb"])
    new = out.prepare("overwrite", {**FP, "engine": "native"}).run_id
    out.write_manifest({**out.read_manifest(), "run_id": new, "fingerprint": {**FP, "engine": "native"}})
    out.commit_part(new, "aa", pa.table({"id": ["0"], "summary": ["new"], "error": pa.array([None], pa.string())}))
    with pytest.raises(ValueError, match="plans a different run"):
        read_output_with_input(out, ["summary"], ["reference"])
    page = build_report(out.uri)  # falls back to the snapshot's rows without inputs
    assert "other words" in page and ">new<" not in page


def test_report_of_a_published_and_of_an_unpublished_output(job):
    out, run = job
    page = build_report(out.uri)
    assert "not published yet: 2 of 2 shard(s) committed by run" in page
    _publish(out, run, ["aa", "bb"])
    page = build_report(out.uri)
    assert "succeeded" in page and "text 4" in page and "other words" in page
