"""The run protocol shared by inference and training: typed outcomes on the wire, one progress type,
a model folder's `_SUCCESS.json` written by `Run.succeed_model`, the runner chosen by manifest kind;
and the inference run's pieces that need no Ray: the outcome decision (succeeded / partial / failed),
a retried part merged whole, a retry planned from a published marker, whole-job row progress."""

from __future__ import annotations

import json
import pickle

import pyarrow as pa

import pytest

from jobs.lifecycle import JobState
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from jobs.run.protocol import Run
from jobs.run.results import JobProgress, JobResult
from jobs.run.registry import RUNNERS, run_training, runner_for
from workers.output.location import SUCCESS_FILE, OutputLocation



def test_result_wire_shape_round_trips():
    result = JobResult(JobState.CANCELLED, "/out", "cancelled by request", {"rows": 3})
    data = result.to_dict()
    assert data == {"status": "cancelled", "error": "cancelled by request", "summary": {"rows": 3},
                    "output_uri": "/out"}
    assert json.loads(json.dumps(data)) == data
    again = JobResult.from_dict(data)
    assert again == result and again.status is JobState.CANCELLED and not again.ok
    assert JobResult("succeeded", "/out").ok  # a state's string value is taken as the state
    with pytest.raises(ValueError):
        JobResult("finished", "/out")
    assert pickle.loads(pickle.dumps(result)) == result


def test_inference_progress_round_trips():
    p = JobProgress(shards_total=4, shards_done=2, completion_tokens=100, elapsed_s=4.0, phase="running")
    data = p.to_dict()
    assert data["tokens_per_s"] == 25.0 and "event" not in data
    assert JobProgress.from_dict(data) == p


def test_training_progress_carries_the_latest_event_and_its_values():
    p = JobProgress(phase="running")
    p.record({"event": "step", "step": 5, "total_steps": 30, "loss": 6.5, "tokens_per_s": 1200.0})
    p.record({"event": "eval", "step": 5, "eval_loss": 6.4, "final_eval": {"x": 1}})
    assert p.training and (p.event, p.step, p.total_steps) == ("eval", 5, 30)
    data = p.to_dict()
    assert data["event"] == "eval" and data["loss"] == 6.5 and data["eval_loss"] == 6.4
    assert data["tokens_per_s"] == 1200.0 and "final_eval" not in data
    assert JobProgress.from_dict(data) == p


def test_run_publishes_snapshots_and_writes_success_last(tmp_path):
    seen: list[JobProgress] = []
    out = OutputLocation.at(str(tmp_path / "out"))
    with Run("demo", out, job_id="j1", on_progress=seen.append) as run:
        run.publish(shards_total=2)
        result = run.succeed_model({"rows": 7})
    assert [p.phase for p in seen] == ["starting", "done"] and seen[0].shards_total == 2
    assert result.ok and result.summary == {"job_id": "j1", "rows": 7}
    assert json.loads((tmp_path / "out" / SUCCESS_FILE).read_text()) == {"job_id": "j1", "rows": 7}
    ended = run.end(JobState.FAILED, "boom", run.counts(JobState.FAILED))
    assert ended.status is JobState.FAILED and ended.summary["status"] == "failed"


def test_runner_is_chosen_by_manifest_kind(tmp_path):
    inference = parse_manifest({"name": "x", "task": "summarize", "input": {"uri": str(tmp_path)},
                                "output": {"uri": str(tmp_path / "o")}})
    assert runner_for(inference) is run_job
    assert set(RUNNERS) == {"inference", "training"} and RUNNERS["training"] is run_training


# ---- the outcome of an inference run --------------------------------------------------------

from jobs.run.outcome import PartCounts, decide  # noqa: E402
from jobs.run.row_progress import RowProgress  # noqa: E402
from workers.inference.part_table import cast_ids, merge_retried, rows_to_retry  # noqa: E402
from workers.inference.shard_task import ShardReport  # noqa: E402

PLANNED = {"a1", "b2", "c3"}


def outcome(present=PLANNED, rows=100, errors=0, skipped=None, timed_out=False, rate=0.0):
    return decide(planned=PLANNED, present=set(present), counts=PartCounts(rows, errors), skipped=skipped or {},
                  timed_out=timed_out, timeout_s=30.0, max_error_rate=rate)


def test_every_shard_and_no_errors_succeeds():
    o = outcome()
    assert o.state is JobState.SUCCEEDED and o.reasons == [] and o.publishes


def test_errors_above_the_limit_are_partial_and_say_so():
    o = outcome(errors=5, rate=0.01)
    assert o.state is JobState.PARTIAL and o.publishes
    assert o.reasons == ["error rows 5/100 (5%) above max_error_rate 1%"]
    assert outcome(errors=5, rate=0.05).state is JobState.SUCCEEDED  # at the limit: fine
    assert outcome(errors=1).state is JobState.PARTIAL  # default 0.0: any error row is reported


def test_skipped_shards_and_the_deadline_are_partial():
    o = outcome(present={"a1", "b2"}, skipped={"c3": "OSError: bad page"})
    assert o.state is JobState.PARTIAL and "1 shard(s) skipped" in o.reasons[0] and "c3: OSError" in o.reasons[0]
    o = outcome(present={"a1"}, timed_out=True)
    assert o.state is JobState.PARTIAL and o.reasons == ["deadline reached (timeout_s: 30): 2 of 3 shard(s) not done"]


def test_nothing_usable_fails_and_publishes_nothing():
    every_row_an_error = outcome(errors=100, rate=1.0)
    assert every_row_an_error.state is JobState.FAILED and not every_row_an_error.publishes
    assert "every row is an error" in every_row_an_error.error
    nothing = outcome(present=set(), rows=0, timed_out=True)
    assert nothing.state is JobState.FAILED and "no shard was committed" in nothing.error
    lost = outcome(present={"a1", "b2"})  # a shard missing with no deadline and no skip: not a partial
    assert lost.state is JobState.FAILED and "c3" in lost.error


# ---- a retried part ------------------------------------------------------------------------


def test_a_retried_part_keeps_its_other_rows_and_replaces_the_errors():
    base = pa.table({"id": ["x", "y", "z"], "out": ["X", None, None], "error": [None, "engine died", "text is empty"],
                     "error_kind": [None, "retriable", "permanent"], "attempts": pa.array([1, 1, 1], pa.int32())})
    assert rows_to_retry(base, ("retriable",)) == [1]
    assert rows_to_retry(base, ("retriable", "permanent")) == [1, 2]
    redone = pa.table({"id": ["y"], "out": ["Y"], "error": pa.array([None], pa.string()),
                       "error_kind": pa.array([None], pa.string()), "attempts": pa.array([2], pa.int32())})
    merged = merge_retried(base, [1], redone)
    assert merged.schema == base.schema
    assert merged.to_pydict() == {"id": ["x", "y", "z"], "out": ["X", "Y", None], "error": [None, None, "text is empty"],
                                  "error_kind": [None, None, "permanent"], "attempts": [1, 2, 1]}


def test_ids_are_cast_to_the_plans_type_or_named_in_the_error():
    assert cast_ids(pa.chunked_array([[1, 2]]), "string", "f").to_pylist() == ["1", "2"]
    assert cast_ids(pa.array(["7"]), "int64", "f").type == pa.int64()
    with pytest.raises(ValueError, match="in.parquet.*cannot be cast to the plan's int64"):
        cast_ids(pa.array(["seven"]), "int64", "in.parquet")


# ---- whole-job progress --------------------------------------------------------------------


def test_row_progress_counts_resumed_rows_in_flight_batches_and_reports():
    rows = RowProgress(100, PartCounts(40, 2))  # 40 rows committed by an earlier run
    assert rows.fields()["rows_done"] == 40 and rows.fields()["eta_s"] is None
    rows.on_batches({"s1": (5, 1, 50), "s2": (3, 0, 30)})
    f = rows.fields()
    assert (f["rows_done"], f["error_rows"], f["completion_tokens"], f["rows_total"]) == (48, 3, 80, 100)
    rows.on_report(ShardReport("s1", committed=True, rows=10, error_rows=1, completion_tokens=100))
    f = rows.fields()
    assert f["rows_done"] == 40 + 10 + 3 and f["rows_per_s"] > 0 and f["eta_s"] is not None


# ---- llmbatch retry ------------------------------------------------------------------------


def test_retry_takes_the_manifest_back_from_the_output(tmp_path, capsys):
    from jobs.cli.main import main
    from jobs.cli.retry import manifest_of

    assert main(["retry", str(tmp_path / "nothing-here")]) == 2  # refused: no job ran
    assert "no published marker or _manifest.json" in capsys.readouterr().err
    spec = {"name": "x", "task": "summarize", "input": {"uri": str(tmp_path / "in")},
            "output": {"uri": str(tmp_path / "out"), "mode": "error_if_exists"}}
    OutputLocation.at(str(tmp_path / "out")).write_manifest({"manifest": parse_manifest(spec).model_dump(mode="json")})
    again = manifest_of(str(tmp_path / "out"))
    assert again.name == "x" and again.output.mode == "retry_errors"
    # The published snapshot's own job wins over the plan of a later run that failed.
    published = parse_manifest({**spec, "name": "published"}).model_dump(mode="json")
    OutputLocation.at(str(tmp_path / "out")).write_json(SUCCESS_FILE, {"manifest": published})
    assert manifest_of(str(tmp_path / "out")).name == "published"


# ---- where a run starts: retry and resume over a published snapshot (a local folder, no Ray) ----


def _part(ids, errors, kinds):
    n = len(ids)
    return pa.table({"id": ids, "summary": [None if e else "ok" for e in errors], "error": pa.array(errors, pa.string()),
                     "error_kind": pa.array(kinds, pa.string()), "attempts": pa.array([1] * n, pa.int32()),
                     "prompt_tokens": pa.array([3] * n, pa.int32()), "completion_tokens": pa.array([2] * n, pa.int32())})


def _published(tmp_path):
    from workers.output.layout import new_run_id
    from workers.output.snapshot import publish_snapshot

    loc, run_id = OutputLocation.at(str(tmp_path / "out")), new_run_id()
    parts = {"a1": _part(["x", "y"], [None, None], [None, None]),
             "b2": _part(["z", "w"], ["engine died", "text is empty"], ["retriable", "permanent"]),
             "c3": _part(["v"], ["input too long"], ["permanent"])}
    for sid, table in parts.items():
        loc.commit_part(run_id, sid, table)
    publish_snapshot(loc, status="partial", job_id="j", run_id=run_id, fingerprint={"engine": "native"},
                     files={sid: loc.part_path(run_id, sid) for sid in parts}, id_column="id", id_type="string",
                     summary={}, reasons=["error rows"])
    return loc, run_id


def test_a_retry_redoes_the_parts_with_errors_of_its_kinds(tmp_path):
    from jobs.run.retry_plan import RetryRefused, plan_retry

    loc, run_id = _published(tmp_path)
    plan = plan_retry(loc, loc.snapshot(), ["a1", "b2", "c3", "d4"])
    assert (set(plan.base_parts), set(plan.kept), plan.fresh, plan.error_rows) == ({"b2"}, {"a1", "c3"}, {"d4"}, 1)
    assert plan.base_parts["b2"] == loc.part_path(run_id, "b2") and plan.todo == {"b2", "d4"}
    every = plan_retry(loc, loc.snapshot(), ["a1", "b2", "c3"], include_permanent=True)
    assert (set(every.base_parts), every.error_rows) == ({"b2", "c3"}, 3)
    with pytest.raises(RetryRefused, match="no published snapshot"):
        plan_retry(OutputLocation.at(str(tmp_path / "empty")), None, ["a1"])


def test_resume_keeps_the_snapshot_and_the_runs_own_parts(tmp_path):
    from jobs.run.preflight import Plan
    from jobs.run.run_start import run_start
    from workers.inference.shards import Shard
    from workers.output.layout import new_run_id
    from workers.output.location import RunSlot

    loc, _ = _published(tmp_path)
    plan = Plan(shards=[Shard(sid, "f.parquet", 0, 2, (0,), 0) for sid in ("a1", "b2", "c3", "d4", "e5")])
    again = new_run_id()
    loc.commit_part(again, "d4", _part(["u"], [None], [None]))  # committed by the crashed run being resumed
    start = run_start("resume", loc, {"engine": "native"}, plan, RunSlot(again, True, frozenset({"d4"}), loc.snapshot()))
    assert set(start.kept) == {"a1", "b2", "c3"} and start.done_here == {"d4"} and [s.shard_id for s in start.todo] == ["e5"]
    changed = run_start("resume", loc, {"engine": "hf"}, plan, RunSlot(new_run_id(), False, frozenset(), loc.snapshot()))
    assert changed.carried == {} and len(changed.todo) == 5  # another run's parts are never carried
    retry = run_start("retry_errors", loc, {"engine": "native"}, plan, RunSlot(new_run_id(), False, frozenset(),
                                                                                 loc.snapshot()))
    assert set(retry.base_parts) == {"b2"} and {s.shard_id for s in retry.todo} == {"b2", "d4", "e5"}
    assert retry.retry_kinds == ("retriable",)
