"""`params.dtype: auto` through a real job on the local Ray: the driver's choice reaches the
output's fingerprint and summary, a resume elsewhere keeps it, an overwrite decides anew.

This machine's CPU is stood in for (precision.cpu_bf16_fast): the test must see both
answers on whatever CPU runs it. The actors then run the chosen dtype for real (bf16 emulated
where the CPU lacks it: slower, same code)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.manifest import parse_manifest
from jobs.run import precision
from jobs.run.inference import run_job
from tests.support.output_files import assert_each_id_once, marker

pytestmark = pytest.mark.integration


def job(src, out, model, mode="error_if_exists"):
    return parse_manifest({"name": "precision", "task": "summarize", "model": str(model), "engine": "native",
                           "input": {"uri": str(src)}, "output": {"uri": str(out), "mode": mode},
                           "params": {"max_new_tokens": 4}, "resources": {"workers": 1, "batch_size": 8}})


def test_auto_runs_bf16_where_the_cpu_has_it_and_resume_keeps_it(ray_local, tmp_path, tiny_dir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ids = [f"p{i}" for i in range(6)]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids, "text": [f"Package {i} does one thing well." for i in ids]}), src)
    out = tmp_path / "out"

    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: True)
    first = run_job(job(src, out, tiny_dir))
    assert first.ok, first.error
    assert first.summary["dtype"] == "bfloat16"
    assert marker(out)[1]["fingerprint"]["dtype"] == "bfloat16"

    monkeypatch.setattr(precision, "cpu_bf16_fast", lambda: False)  # resumed on a machine without fast bf16
    resumed = run_job(job(src, out, tiny_dir, mode="resume"))
    assert resumed.ok, resumed.error  # not refused as another run: it keeps the recorded bf16
    assert resumed.summary["dtype"] == "bfloat16" and resumed.summary["shards_skipped"] == resumed.summary["shards_total"]

    again = run_job(job(src, out, tiny_dir, mode="overwrite"))
    assert again.ok, again.error
    assert again.summary["dtype"] == "float32"
    assert "dtype" not in marker(out)[1]["fingerprint"]  # fp32: what `auto` always meant on CPUs
    assert_each_id_once(out, ids)
