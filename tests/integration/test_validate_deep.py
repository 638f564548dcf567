"""`llmbatch validate --deep` and `llmbatch run --dry-run` print the pre-flight's plan and exit 2
on any problem; the pre-flight against the loopback S3 server (probe object, an output that holds
the input, model prefixes found by listing); `llmbatch run`'s exit code per outcome."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import yaml

from cluster import ray_cluster, storage
from cluster.storage import s3
from jobs.cli.main import main
from jobs.lifecycle import JobState
from jobs.manifest import parse_manifest
from jobs.run.preflight import preflight
from jobs.run.results import JobResult
from tests.unit.test_preflight import texts, word_model, write
from workers.model_resolver import resolve_model


@pytest.fixture(autouse=True)
def empty_model_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))


def manifest_file(tmp_path, **over) -> str:
    data = {"version": 1, "name": "deep", "task": "summarize", "model": str(word_model(tmp_path / "model")),
            "input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(tmp_path / "out")},
            "params": {"max_new_tokens": 8}}
    data.update(over)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("command", [["validate", "--deep"], ["run", "--dry-run"]])
def test_the_plan_is_printed_and_a_good_job_exits_0(tmp_path, capsys, monkeypatch, command):
    def no_ray(*args, **kwargs):
        raise AssertionError("a dry run must not start or join Ray")

    monkeypatch.setattr(ray_cluster, "connect", no_ray)  # (the session may share a Ray: check the call)
    write(tmp_path / "in" / "a.parquet", id=["a", "b", "c"], text=texts(3))
    code = main([*command, manifest_file(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    for expected in ("plan: ", "input: 1 file(s)", "a.parquet", "shards: 1", "rows: 3",
                     "id column: 'id' read as string", "model: ", "identity ", "estimated tokens: ",
                     "ok: no problems found"):
        assert expected in out, (expected, out)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing left


@pytest.mark.parametrize("command", [["validate", "--deep"], ["run", "--dry-run"]])
def test_every_problem_is_printed_and_the_exit_code_is_2(tmp_path, capsys, command):
    write(tmp_path / "in" / "a.parquet", id=["a", "a", None], text=texts(3))
    path = manifest_file(tmp_path, output={"uri": str(tmp_path), "mode": "overwrite"})  # it holds the input
    code = main([*command, path])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "problems (3): the job would be refused" in out
    assert "repeat an earlier 'id'" in out and "null 'id'" in out and "holds input files" in out


def test_plain_validate_checks_the_manifest_only(tmp_path, capsys):
    write(tmp_path / "in" / "a.parquet", id=["a", "a"], text=texts(2))
    assert main(["validate", manifest_file(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: summarize\ninput: {uri: a}\n")
    assert main(["validate", "--deep", str(bad)]) == 2  # refused before any pre-flight


def test_a_training_manifest_gets_the_checks_that_apply(tmp_path, capsys):
    write(tmp_path / "train" / "a.parquet", text=texts(5))
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "kind": "training", "name": "ft", "task": "finetune", "objective": "causal_lm",
        "model": {"uri": "builtin:smollm2-135m-instruct"}, "data": {"train": str(tmp_path / "train"), "seq_len": 32},
        "training": {"max_steps": 2}, "checkpoint": {"uri": str(tmp_path / "ckpt")},
        "output": {"uri": str(tmp_path / "model-out")}}))
    assert main(["validate", "--deep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "data.train: 1 Parquet file(s) readable (5 rows)" in out and "checkpoint.uri: " in out
    assert "model.uri: builtin:smollm2-135m-instruct resolvable" in out


def _put_parquet(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


@pytest.mark.integration
@pytest.mark.s3
def test_s3_probe_overlap_and_model_prefixes(s3_bucket, tmp_path):
    base = f"s3://{s3_bucket}"
    _put_parquet(f"{base}/in/a.parquet", pa.table({"id": [1, 2, 2], "text": texts(3)}))
    model = word_model(tmp_path / "model")
    for f in model.iterdir():
        storage.write_bytes(f"{base}/models/good/{f.name}", f.read_bytes())
    storage.write_bytes(f"{base}/models/no-weights/config.json", b"{}")

    def plan(**over):
        data = {"name": "s3", "task": "summarize", "model": f"{base}/models/good", "input": {"uri": f"{base}/in"},
                "output": {"uri": f"{base}/out"}, **over}
        return preflight(parse_manifest(data))

    good = plan()
    assert good.id_type == "int64" and good.rows == 3 and good.model["kind"] == "s3"
    assert any("repeat an earlier 'id'" in p and "row 2 id 2" in p for p in good.problems), good.problems
    assert any("output: s3://" in c and "writable" in c for c in good.checked)
    assert any("token lengths not checked" in w for w in good.warnings)  # not in this node's cache
    listed = s3.client().list_objects_v2(Bucket=s3_bucket).get("Contents", [])
    assert not [o["Key"] for o in listed if "_probe-" in o["Key"]]  # the probe was deleted
    whole_bucket = plan(output={"uri": base, "mode": "overwrite"})
    assert any("holds input files" in p and f"{base}/in/a.parquet" in p for p in whole_bucket.problems)
    no_weights = plan(model=f"{base}/models/no-weights")
    assert any(p.startswith("model: ") and "weights" in p for p in no_weights.problems), no_weights.problems
    missing = plan(model=f"{base}/models/none")
    assert any(p.startswith("model: ") for p in missing.problems)
    unwritable = plan(output={"uri": "s3://no-such-bucket-h2/out"})
    assert any(p.startswith("output.uri: ") and "not writable" in p for p in unwritable.problems), unwritable.problems
    # once a worker on this node has the model in its cache (by content), the prompts are checked
    resolve_model(f"{base}/models/good")
    cached = plan()
    assert not any("token lengths not checked" in w for w in cached.warnings), cached.warnings
    assert any(c.startswith("prompts: 3 sampled row(s) tokenized") for c in cached.checked), cached.checked


@pytest.mark.parametrize(("status", "summary", "expected"), [
    (JobState.SUCCEEDED, {}, 0), (JobState.FAILED, {}, 1), (JobState.PARTIAL, {}, 3),
    (JobState.CANCELLED, {}, 130), (JobState.FAILED, {"refused": True}, 2),
])
def test_run_exit_code_per_outcome(tmp_path, monkeypatch, capsys, status, summary, expected):
    """The CLI's mapping from a runner's result to the exit code (the runner's own outcomes are
    tested with the runner; here it returns each outcome directly)."""
    from jobs.run import registry

    write(tmp_path / "in" / "a.parquet", id=["a"], text=texts(1))
    result = JobResult(status, str(tmp_path / "out"), None if status is JobState.SUCCEEDED else "why",
                       {"job_id": "j", **summary})
    monkeypatch.setitem(registry.RUNNERS, "inference", lambda manifest, **kwargs: result)
    assert main(["run", "--no-progress", manifest_file(tmp_path)]) == expected
    err = capsys.readouterr().err
    assert ("job refused: why" in err) == bool(summary.get("refused"))
    assert not os.path.exists(tmp_path / "out")


def test_a_cluster_that_cannot_run_this_code_is_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    from cluster.ray_code import ClusterCodeMismatch
    from jobs.run import registry

    def runner(manifest, **kwargs):  # what ray_cluster.connect raises when verify_workers finds a difference
        raise ClusterCodeMismatch("this driver cannot run jobs on the joined cluster:\n  - pyarrow 15.0 vs 21.0")

    monkeypatch.setitem(registry.RUNNERS, "inference", runner)
    assert main(["run", "--no-progress", manifest_file(tmp_path)]) == 2
    assert "pyarrow 15.0 vs 21.0" in capsys.readouterr().err
