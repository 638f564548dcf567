"""The run protocol shared by inference and training: typed outcomes on the wire, one progress type,
`_SUCCESS.json` written by `Run.succeed`, the runner chosen by manifest kind."""

from __future__ import annotations

import json
import pickle

import pytest

from jobs.lifecycle import JobState
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from jobs.run.protocol import Run
from jobs.run.results import JobProgress, JobResult
from jobs.run.registry import RUNNERS, run_training, runner_for
from workers.output.location import SUCCESS_FILE, OutputLocation

INFERENCE_KEYS = {"shards_total", "shards_done", "shards_failed", "shards_skipped", "rows", "error_rows",
                  "completion_tokens", "elapsed_s", "phase", "tokens_per_s"}


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


def test_inference_progress_keeps_its_wire_shape():
    p = JobProgress(shards_total=4, shards_done=2, completion_tokens=100, elapsed_s=4.0, phase="running")
    data = p.to_dict()
    assert set(data) == INFERENCE_KEYS and data["tokens_per_s"] == 25.0
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
        result = run.succeed({"rows": 7})
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
