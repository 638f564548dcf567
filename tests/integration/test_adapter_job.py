"""An inference job with `model:` (the base) plus `adapter:` gives exactly the outputs of the same
job on a model folder with the adapter merged in (greedy, fp32), not the base's; a resume with a
retrained adapter is refused naming it. An adapter on S3 is checked and fetched like a model."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.storage import s3
from jobs.manifest import parse_manifest
from jobs.run.inference import run_job, sampling_params, task_spec
from jobs.run.preflight import preflight
from llm_core.llm import LLM
from tests.support.adapters import make_adapter, merged_copy
from tests.support.tiny_model import build_tiny_model
from workers.adapter_folder import AdapterChanged, resolve_adapter
from workers.output.location import OutputLocation

pytestmark = pytest.mark.integration
TEXTS = ["Debian is a free operating system.", "The quick brown fox jumps over the lazy dog.",
         "A batch job reads Parquet shards.", "Summarize the following text in one sentence."]


def outputs(out) -> list[str]:
    rows = {r["id"]: r for r in OutputLocation.at(str(out)).read_snapshot().to_pylist()}
    assert all(r["error"] is None for r in rows.values()), rows
    return [rows[str(i)]["summary"] for i in range(len(TEXTS))]


def test_adapter_job_equals_the_merged_model_and_not_the_base(ray_local, tmp_path):
    base = build_tiny_model(tmp_path / "base", tokenizer="bpe")
    adapter = make_adapter(tmp_path / "adapter", base, rank=4, alpha=8.0, std=0.3)
    merged = merged_copy(base, adapter, tmp_path / "merged")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(len(TEXTS))], "text": TEXTS}), src)

    def manifest(model, out, adapter_ref=None, mode="error_if_exists"):
        return parse_manifest({"name": "tuned", "task": "summarize", "model": str(model), "adapter": adapter_ref,
                               "engine": "native", "input": {"uri": str(src)},
                               "output": {"uri": str(out), "mode": mode},
                               "params": {"max_new_tokens": 6, "temperature": 0.0, "dtype": "float32"}})

    tuned = run_job(manifest(base, tmp_path / "tuned", str(adapter)))
    assert tuned.ok, tuned.error
    assert tuned.summary["adapter"] == str(adapter)
    reference = run_job(manifest(merged, tmp_path / "merged_out"))
    assert reference.ok, reference.error
    assert outputs(tmp_path / "tuned") == outputs(tmp_path / "merged_out")

    plain_job = manifest(base, tmp_path / "plain")  # the same job without the adapter, run in process
    plain = LLM(base, engine="native", device="cpu", dtype="float32").run_task(
        task_spec(plain_job), TEXTS, sampling_params(plain_job))
    assert all(r.error is None for r in plain)
    assert [r.output for r in plain] != outputs(tmp_path / "tuned")  # the adapter changed the model

    make_adapter(adapter, base, rank=4, alpha=8.0, std=0.3, seed=9)  # retrained in place
    resumed = run_job(manifest(base, tmp_path / "tuned", str(adapter), mode="resume"))
    assert not resumed.ok and resumed.summary.get("refused")
    assert "adapter: adapter_model.safetensors sha256" in resumed.error


@pytest.mark.s3
def test_s3_adapter_is_checked_at_preflight_and_fetched_into_the_cache(s3_bucket, tmp_path, monkeypatch):
    """The base a local folder, the adapter on S3: pre-flight reads only its config and the tensors'
    header; a worker downloads it into a cache entry named by its content, and refuses it re-published."""
    monkeypatch.setenv("LLMBATCH_CACHE", str(tmp_path / "cache"))
    base = build_tiny_model(tmp_path / "base", tokenizer="bpe")
    local = make_adapter(tmp_path / "adapter", base)
    uri = f"s3://{s3_bucket}/adapters/a"
    for path in local.iterdir():
        s3.write_bytes(f"{uri}/{path.name}", path.read_bytes())
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["0"], "text": TEXTS[:1]}), src)
    m = parse_manifest({"name": "s3", "task": "summarize", "model": str(base), "adapter": uri,
                        "input": {"uri": str(src)}, "output": {"uri": str(tmp_path / "out")}})
    plan = preflight(m, probe_output=False)
    assert plan.ok, plan.problems
    assert plan.adapter["kind"] == "s3" and set(plan.adapter["files"]) == {"adapter_config.json",
                                                                           "adapter_model.safetensors"}
    folder = resolve_adapter(uri, expect=plan.adapter)
    assert (folder / "adapter_model.safetensors").read_bytes() == (local / "adapter_model.safetensors").read_bytes()
    s3.write_bytes(f"{uri}/adapter_model.safetensors", (make_adapter(tmp_path / "v2", base, seed=4)
                                                        / "adapter_model.safetensors").read_bytes())
    with pytest.raises(AdapterChanged, match=f"adapter {uri} changed since the job started"):
        resolve_adapter(uri, expect=plan.adapter)
    other = build_tiny_model(tmp_path / "other", tokenizer="bpe", hidden_size=32)
    refused = preflight(m.model_copy(update={"model": str(other)}), probe_output=False)
    assert any(p.startswith("adapter: ") and "not on model" in p for p in refused.problems), refused.problems
