"""`task.calibrate` in manifests and on the driver: the methods it names, the refusal of others,
the fingerprint that changes with the method, and the calibration sample of the job's rows
(jobs.run.calibration) that every worker receives, the same whatever the shard layout."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import ManifestError, parse_manifest
from jobs.run.calibration import calibration_texts
from jobs.run.work import build_work
from llm_core.calibration import CALIBRATION_TEXT_CHARS, sample_indices
from workers.output.fingerprint import fingerprint_sha256, run_fingerprint
from workers.output.location import OutputLocation


def manifest(tmp_path, task, engine=None):
    return parse_manifest({"name": "t", "task": {"kind": "classify", "labels": ["net", "mail"], **task},
                           "input": {"uri": str(tmp_path / "in")}, "output": {"uri": str(tmp_path / "out")},
                           **({"engine": engine} if engine else {})})


def fingerprint(m) -> str:
    return fingerprint_sha256(run_fingerprint(files=[], model={}, engine="auto", task=m.task.model_dump(mode="json"),
                                              params={}, columns={}, id_type="string"))


@pytest.mark.parametrize("value, method", [(None, "batch"), (True, "batch"), ("batch", "batch"),
                                           ("content_free", "content_free"), (False, False)])
def test_calibrate_names_its_method_in_the_manifest(tmp_path, value, method):
    m = manifest(tmp_path, {} if value is None else {"calibrate": value})
    assert m.task.calibrate == method and m.task.model_dump(mode="json")["calibrate"] == method


@pytest.mark.parametrize("value", ["domain", "yes", 1, None, ["batch"]])
def test_an_unknown_calibrate_value_is_refused_naming_the_field(tmp_path, value):
    with pytest.raises(ManifestError) as caught:
        manifest(tmp_path, {"calibrate": value})
    assert "task.calibrate" in str(caught.value) and "must be true, false, batch or content_free" in str(caught.value)


def test_the_fingerprint_changes_with_the_method(tmp_path):
    prints = {v: fingerprint(manifest(tmp_path, {"calibrate": v})) for v in (True, "batch", "content_free", False)}
    assert prints[True] == prints["batch"]  # true is the default method, by name
    assert len({prints["batch"], prints["content_free"], prints[False]}) == 3


def write_input(folder) -> list:
    """Two files (several row groups each): the texts of the job's rows, in input order."""
    folder.mkdir()
    a = [f"alpha {i} " + "x" * (3000 if i == 4 else 0) for i in range(10)]
    b = ["beta 0", None, "", "beta 3", "  "]
    pq.write_table(pa.table({"id": list(range(10)), "text": a}), folder / "a.parquet", row_group_size=3)
    pq.write_table(pa.table({"id": list(range(10, 15)), "text": b}), folder / "b.parquet", row_group_size=2)
    return a + b


def test_the_sample_is_drawn_over_every_file_and_leaves_out_blank_rows(tmp_path):
    rows = write_input(tmp_path / "in")
    m = manifest(tmp_path, {})
    everything = calibration_texts(m, None, k=100)
    assert everything == tuple(t[:CALIBRATION_TEXT_CHARS] for t in rows if t and t.strip())
    assert len(everything[4]) == CALIBRATION_TEXT_CHARS
    drawn = calibration_texts(m, None, k=6)
    expected = [rows[i] for i in sample_indices(len(rows), 6)]
    assert drawn == tuple(t[:CALIBRATION_TEXT_CHARS] for t in expected if t and t.strip())
    assert drawn == calibration_texts(m, None, k=6)  # every build of the work: the same sample


def test_a_jobs_work_carries_the_sample_only_where_batch_calibration_needs_it(tmp_path):
    write_input(tmp_path / "in")
    out = OutputLocation.at(str(tmp_path / "out"))
    work = build_work(manifest(tmp_path, {}), "job", out)
    assert work.task.calibrate == "batch" and work.task.calibration_texts == calibration_texts(manifest(tmp_path, {}), None)
    assert build_work(manifest(tmp_path, {"calibrate": "content_free"}), "job", out).task.calibration_texts is None
    assert build_work(manifest(tmp_path, {"calibrate": False}), "job", out).task.calibration_texts is None
    baseline = manifest(tmp_path, {"train_uri": str(tmp_path / "in")}, engine="baseline")
    assert build_work(baseline, "job", out).task.calibration_texts is None
    assert build_work(manifest(tmp_path, {}), "job").task.calibration_texts is None  # no run: each call's rows
