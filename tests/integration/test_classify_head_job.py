"""A classify job whose model folder carries a classification head uses the head, not prompting."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from jobs.manifest import parse_manifest
from jobs.run.inference import run_job
from tests.support.tiny_model import build_tiny_model
from workers.inference.classifier_head import CLASSIFIER_FILE, LABELS_FILE, load_classifier
from workers.output.location import OutputLocation

pytestmark = pytest.mark.integration
LABELS = ["net", "python", "utils"]


@pytest.fixture(scope="module")
def head_model(tmp_path_factory):
    """A tiny decoder plus a linear head and labels.json, laid out as training exports it."""
    folder = build_tiny_model(tmp_path_factory.mktemp("clf"), tokenizer="bpe")
    config = json.loads((folder / "config.json").read_text())
    config.update(llmbatch_task="classification", llmbatch_max_tokens=64)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(1)
    save_file({"weight": torch.randn(len(LABELS), config["hidden_size"]), "bias": torch.zeros(len(LABELS))},
              str(folder / CLASSIFIER_FILE))
    (folder / LABELS_FILE).write_text(json.dumps(LABELS))
    return folder


def test_classify_job_runs_the_head(ray_local, tmp_path, head_model):
    texts = [f"package {i} does networking things" for i in range(12)] + [None]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(13)], "text": texts}), src, row_group_size=5)
    m = parse_manifest({"name": "head", "task": {"kind": "classify", "labels": ["utils", "net", "python"]},
                        "model": str(head_model), "input": {"uri": str(src)},
                        "output": {"uri": str(tmp_path / "out")}, "resources": {"workers": 1},
                        # fp32 as the reference below: auto would be bf16 on a CPU that has it
                        "params": {"dtype": "float32"}, "max_error_rate": 0.1})  # the null row: 1 error of 13
    result = run_job(m)
    assert result.ok, result.error
    rows = {r["id"]: r for r in OutputLocation.at(str(tmp_path / "out")).read_snapshot().to_pylist()}
    assert rows["12"]["error"] == "text is null"
    expected = load_classifier(head_model).predict(texts[:12])
    assert [rows[str(i)]["label"] for i in range(12)] == expected  # exactly the head's answers


def test_classify_job_with_other_labels_fails_clearly(ray_local, tmp_path, head_model):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), src)
    m = parse_manifest({"name": "head", "task": {"kind": "classify", "labels": ["cats", "dogs"]},
                        "model": str(head_model), "input": {"uri": str(src)},
                        "output": {"uri": str(tmp_path / "out")}, "max_shard_attempts": 1})
    result = run_job(m)
    assert result.status == "failed" and "classifier head knows labels" in result.error
